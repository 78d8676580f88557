"""Galaxies: multi-band image cutouts, catalog scalars and spectra, keyed by one object id per galaxy.

Sources (the data config's nested group data/galaxy_source):
    EmbeddedGalaxies   kcorrect's 10,000 real SDSS galaxies with GalSim images and template spectra
                       (datamodules/galaxy_sim.py), generated once (seeded) and cached atomically under data_dir
    GalaxyParquet      your parquet table(s): one row per object (pyarrow), images as nested lists
    GalaxyFits         your FITS cutouts: one file per object, [bands, S, S] in the primary HDU, ellipse in the header

Batches for the image tokenizer: {"image": [B, bands, S, S] robust-arcsinh normalized (tokenizers/astro.py),
"weight": [B, 1, S, S] the loss weights (1 inside the object's ellipse scaled by mask_scale, outside_weight
outside), "row": [B] the object's row}. `datamodule.table` keeps every modality; `encode_set(split)` gives each object
with its catalog and spectrum for the token export (encode.py, through GalaxyObjectsAdapter).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.adapters import BatchAdapter, GalaxyImageAdapter, ModelInput
from datamodules.common import (
    EpochShuffleSampler,
    SplitDataModule,
    cache_key,
    file_stamp,
    find_files,
    split_indices,
)
from datamodules.galaxy_sim import CATALOG_COLUMNS, LSST_BANDS, default_workers, simulate
from datamodules.token_store import arrays_fingerprint
from tokenizers.astro import ellipse_weights, robust_arcsinh
from tokenizers.base import DataMetadata
from tokenizers.load import UNREADABLE, atomic_write

log = logging.getLogger(__name__)
ELLIPSE = ("x0", "y0", "a", "b", "theta")


@dataclass
class GalaxyTable:
    """Every modality of N objects. image: [N, bands, S, S] float32 (may be a memory map); x0, y0, a, b, theta: [N]
    ellipse parameters (pixels, radians); catalog: [N, C] float32 with NaN for missing values; spectrum and
    spectrum_ivar: [N, L] (None when the data has no spectra); wave: [L] Å; bands / catalog_columns: names."""

    object_id: np.ndarray
    image: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    catalog: np.ndarray
    catalog_columns: list[str]
    bands: list[str]
    wave: np.ndarray | None = None
    spectrum: np.ndarray | None = None
    spectrum_ivar: np.ndarray | None = None
    origin: str = ""

    def __len__(self) -> int:
        return len(self.object_id)

    def validate(self, bands: int | None = None) -> GalaxyTable:
        """Raise ValueError naming the origin, object and band for: a wrong number of bands or image rank, arrays
        of different lengths, duplicate ids, non-finite ellipse parameters, non-finite pixels inside the valid area
        (pixels that are exactly 0 count as masked out: robust_arcsinh ignores them)."""
        where = self.origin or "galaxy data"
        if self.image.ndim != 4 or self.image.shape[-1] != self.image.shape[-2]:
            raise ValueError(f"{where}: images must be [N, bands, S, S], got shape {tuple(self.image.shape)}")
        if bands is not None and self.image.shape[1] != bands:
            raise ValueError(
                f"{where}: expected {bands} bands (data.bands), got {self.image.shape[1]} "
                f"(image shape {tuple(self.image.shape)})"
            )
        if len(self.bands) != self.image.shape[1]:
            raise ValueError(f"{where}: {len(self.bands)} band names for {self.image.shape[1]} image bands")
        n = len(self.object_id)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray) and f.name != "wave" and len(value) != n:
                raise ValueError(f"{where}: {f.name} has {len(value)} rows for {n} objects")
        if len(np.unique(self.object_id)) != n:
            raise ValueError(f"{where}: object ids are not unique")
        for name in ELLIPSE:
            bad = ~np.isfinite(getattr(self, name))
            if bad.any():
                raise ValueError(
                    f"{where}: ellipse parameter {name!r} is not finite for object {self.object_id[bad.argmax()]}"
                )
        for start in range(0, n, 1024):  # in chunks: the images may be a memory map larger than RAM
            chunk = np.asarray(self.image[start : start + 1024])
            bad = ~np.isfinite(chunk)
            if bad.any():
                obj, band = np.argwhere(bad.any(axis=(2, 3)))[0]
                raise ValueError(
                    f"{where}: object {self.object_id[start + obj]} band {self.bands[band]!r} has "
                    f"{int(bad[obj, band].sum())} NaN/Inf pixels; mark pixels outside the valid area with 0 "
                    f"(they are then ignored) or drop the object"
                )
        if self.spectrum is not None:
            if self.spectrum_ivar is None or self.spectrum.shape != self.spectrum_ivar.shape:
                raise ValueError(f"{where}: spectra need an inverse variance of the same shape")
            bad = ~np.isfinite(self.spectrum) & (self.spectrum_ivar > 0)
            if bad.any():
                raise ValueError(
                    f"{where}: object {self.object_id[bad.any(1).argmax()]} has non-finite spectrum "
                    f"pixels with ivar > 0 (set their ivar to 0)"
                )
        return self


@contextlib.contextmanager
def folder_written_once(path: Path, last_written: str) -> Iterator[Path]:
    """atomic_write for a folder: yields the new empty temporary folder, published as `path` in one rename. If
    another process got there first (the rename fails on a non-empty target) and its folder is complete (has
    `last_written`), theirs is identical: it is kept and ours removed."""
    try:
        with atomic_write(path) as tmp:
            tmp.mkdir()
            yield tmp
    except OSError:
        if not (path / last_written).is_file():
            raise


class EmbeddedGalaxies:
    """kcorrect's SDSS galaxies with GalSim images and template spectra (datamodules/galaxy_sim.py), generated on
    first use and cached under data_dir in a folder named after the parameters (written under a temporary name and
    renamed, so an interrupted build leaves nothing that is read later)."""

    def __init__(
        self,
        n_objects: int | None = None,
        size: int = 64,
        bands: Sequence[str] = LSST_BANDS,
        pixel_scale: float = 0.2,
        spectrum_pixels: int = 512,
        lsf_sigma: float = 1.0,
        seed: int = 0,
        workers: int | None = None,
    ):
        self.params = dict(
            n_objects=n_objects,
            size=size,
            bands=list(bands),
            pixel_scale=pixel_scale,
            spectrum_pixels=spectrum_pixels,
            lsf_sigma=lsf_sigma,
            seed=seed,
            version=1,
        )
        self.workers = workers or default_workers()

    def cache_dir(self, data_dir: str | Path) -> Path:
        return Path(data_dir) / f"galaxies_{cache_key(self.params)}"

    def prepare(self, data_dir: str | Path) -> Path:
        path = self.cache_dir(data_dir)
        if (path / "meta.json").is_file():
            try:  # headers only (memory-mapped): a truncated or corrupt array fails here, not mid-training
                json.loads((path / "meta.json").read_text())
                for f in path.glob("*.npy"):
                    np.load(f, mmap_mode="r")
                return path
            except UNREADABLE as e:
                log.warning(
                    "the cached galaxy set %s cannot be read (%s: %s); regenerating it", path, type(e).__name__, e
                )
                shutil.rmtree(path)
        start = time.perf_counter()
        p = {k: v for k, v in self.params.items() if k != "version"}
        arrays = simulate(
            p["n_objects"],
            p["size"],
            tuple(p["bands"]),
            p["pixel_scale"],
            p["spectrum_pixels"],
            p["lsf_sigma"],
            p["seed"],
            self.workers,
        )
        with folder_written_once(path, "meta.json") as tmp:
            for key, value in arrays.items():
                np.save(tmp / f"{key}.npy", value)
            (tmp / "meta.json").write_text(json.dumps({**self.params, "catalog_columns": list(CATALOG_COLUMNS)}))
        log.info(
            "built the embedded galaxy set (%d objects) in %.0f s: %s",
            len(arrays["object_id"]),
            time.perf_counter() - start,
            path,
        )
        return path

    def load(self, data_dir: str | Path) -> GalaxyTable:
        path = self.prepare(data_dir)
        meta = json.loads((path / "meta.json").read_text())

        def arr(key: str) -> np.ndarray:
            return np.load(path / f"{key}.npy", mmap_mode="r" if key == "image" else None)

        return GalaxyTable(
            object_id=arr("object_id"),
            image=arr("image"),
            **{k: arr(k) for k in ELLIPSE},
            catalog=arr("catalog"),
            catalog_columns=meta["catalog_columns"],
            bands=meta["bands"],
            wave=arr("wave"),
            spectrum=arr("spectrum"),
            spectrum_ivar=arr("spectrum_ivar"),
            origin=f"embedded galaxies {path}",
        )


def cached_galaxies(
    data_dir: str | Path,
    kind: str,
    key: dict,
    n: int,
    parts: Callable[[], Iterator[tuple[Path, dict[str, np.ndarray | None]]]],
) -> dict[str, np.ndarray]:
    """Users' galaxies converted once into <data_dir>/galaxies_user/<kind>-<hash>/: the images as one .npy that is
    memory-mapped when read (any number of objects), the other columns (one row per object) in columns.npz. `parts`
    yields (file, columns) a few objects at a time; the images of every part must have the first part's shape.
    The folder is keyed by the files (paths, sizes, modification times) and the settings, and written under a
    temporary name, then renamed."""
    path = Path(data_dir) / "galaxies_user" / f"{kind}-{cache_key(key)}"
    if (path / "columns.npz").is_file():
        try:
            with np.load(path / "columns.npz", allow_pickle=False) as f:
                columns = {k: f[k] for k in f.files}
            return {**columns, "image": np.load(path / "image.npy", mmap_mode="r")}
        except UNREADABLE as e:  # a cache: convert again
            log.warning("galaxy cache %s cannot be read (%s); converting the files again", path, e)
            shutil.rmtree(path, ignore_errors=True)
    with folder_written_once(path, "columns.npz") as tmp:
        image, done, columns, first = None, 0, {}, None
        for f, part in parts():
            if image is None:
                first = (f, part["image"].shape[1:])
                image = np.lib.format.open_memmap(
                    tmp / "image.npy", mode="w+", dtype=np.float32, shape=(n, *part["image"].shape[1:])
                )
            if part["image"].shape[1:] != first[1]:
                raise ValueError(
                    f"{f}: images of shape {part['image'].shape[1:]}, but {first[0]} has {first[1]}: "
                    f"every object of one data set needs the same [bands, S, S]"
                )
            image[done : done + len(part["image"])] = part["image"]
            done += len(part["image"])
            for k, v in part.items():
                if k != "image" and v is not None:
                    columns.setdefault(k, []).append(v)
        if image is None or done != n:
            raise ValueError(f"{kind} galaxies: read {done} objects where the files' metadata promised {n}")
        image.flush()
        del image
        np.savez(tmp / "columns.npz", **{k: np.concatenate(v) for k, v in columns.items()})
    log.info("converted %d %s galaxies into %s (images memory-mapped from there)", n, kind, path)
    return cached_galaxies(data_dir, kind, key, n, parts)


class GalaxyParquet:
    """Your galaxies as parquet (one file or a folder of them, read with pyarrow), one row per object:
    id_column          int64 object id
    image_column       the cutout as a nested list [bands][S][S] (or flat, bands·S·S values) of floats
    x0, y0, a, b, theta   ellipse of the object (pixels, radians; x0/y0 default to the centre)
    catalog_columns    numeric columns to tokenize (null = missing)
    spectrum_column, ivar_column   optional: flux and inverse variance lists of one length; wave: their grid
    """

    def __init__(
        self,
        path: str | None = None,
        bands: Sequence[str] = LSST_BANDS,
        id_column: str = "object_id",
        image_column: str = "image",
        catalog_columns: Sequence[str] = (),
        spectrum_column: str | None = None,
        ivar_column: str | None = None,
        wave: Sequence[float] | None = None,
    ):
        self.path, self.bands, self.id_column, self.image_column = path, list(bands), id_column, image_column
        self.catalog_columns = list(catalog_columns)
        self.spectrum_column, self.ivar_column, self.wave = spectrum_column, ivar_column, wave

    def load(self, data_dir: str | Path) -> GalaxyTable:
        """Converted once (a record batch at a time) into a cache under data_dir whose images are memory-mapped."""
        import pyarrow.parquet as pq

        files = find_files(self.path, (".parquet", ".pq"), "GalaxyParquet")
        needed = [
            self.id_column,
            self.image_column,
            "a",
            "b",
            "theta",
            *self.catalog_columns,
            *(c for c in (self.spectrum_column, self.ivar_column) if c),
        ]
        n = 0
        for f in files:
            try:
                meta = pq.ParquetFile(f)
            except Exception as e:  # pyarrow raises several types for unreadable files
                raise ValueError(f"{f}: not a readable parquet file ({e})") from None
            missing = [c for c in needed if c not in meta.schema_arrow.names]
            if missing:
                raise ValueError(f"{f}: missing required column(s) {missing}; it has {meta.schema_arrow.names}")
            n += meta.metadata.num_rows

        def parts():
            import pyarrow as pa

            for f in files:
                try:
                    for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
                        yield f, self._convert(f, pa.Table.from_batches([batch]))
                except OSError as e:
                    raise ValueError(f"{f}: cannot be read to its end ({e}): truncated or corrupt") from None

        key = {
            "files": [file_stamp(f) for f in files],
            "source": {k: v for k, v in vars(self).items() if k != "path"},
            "version": 1,
        }
        columns = cached_galaxies(data_dir, "parquet", key, n, parts)
        wave = np.asarray(self.wave, np.float32) if self.wave is not None else None
        return GalaxyTable(
            **{k: columns.get(k) for k in ("object_id", "image", *ELLIPSE, "catalog", "spectrum", "spectrum_ivar")},
            catalog_columns=self.catalog_columns,
            bands=self.bands,
            wave=wave,
            origin=", ".join(str(f) for f in files),
        )

    def _convert(self, f: Path, table) -> dict[str, np.ndarray | None]:
        n, B = table.num_rows, len(self.bands)
        images = []
        for i, cell in enumerate(table.column(self.image_column).to_pylist()):
            a = np.asarray(cell, dtype=np.float32)
            if a.ndim == 1:
                side = int(round((a.size / B) ** 0.5))
                if side * side * B != a.size:
                    raise ValueError(f"{f}: row {i}: {a.size} image values are not {B} bands of S×S pixels")
                a = a.reshape(B, side, side)
            if a.ndim != 3 or a.shape[0] != B:
                raise ValueError(f"{f}: row {i}: expected {B} bands (data.source.bands), got image shape {a.shape}")
            images.append(a)
        sizes = {im.shape for im in images}
        if len(sizes) != 1:
            raise ValueError(f"{f}: images of different shapes {sorted(sizes)}")
        image = np.stack(images)
        size = image.shape[-1]

        def col(name: str, default: float | None = None) -> np.ndarray:
            if name not in table.column_names:
                return np.full(n, default, np.float32)
            return np.asarray(table.column(name).to_numpy(zero_copy_only=False), np.float32)

        def lists(name: str | None) -> np.ndarray | None:
            return None if name is None else np.asarray(table.column(name).to_pylist(), np.float32)

        catalog = (
            np.stack([col(c) for c in self.catalog_columns], 1)
            if self.catalog_columns
            else np.zeros((n, 0), np.float32)
        )
        return {
            "object_id": np.asarray(table.column(self.id_column).to_numpy(), np.int64),
            "image": image,
            "x0": col("x0", size / 2 - 0.5),
            "y0": col("y0", size / 2 - 0.5),
            "a": col("a"),
            "b": col("b"),
            "theta": col("theta"),
            "catalog": catalog,
            "spectrum": lists(self.spectrum_column),
            "spectrum_ivar": lists(self.ivar_column),
        }


class GalaxyFits:
    """Your FITS cutouts: one file per object (folder, recursive), the primary HDU [bands, S, S]; header keys OBJID
    (default: the file's index), X0, Y0, A, B, THETA (pixels, radians; default a centred circle of radius S/8)."""

    def __init__(self, path: str | None = None, bands: Sequence[str] = LSST_BANDS):
        self.path, self.bands = path, list(bands)

    def load(self, data_dir: str | Path) -> GalaxyTable:
        """Converted once into a cache under data_dir whose images are memory-mapped (any number of cutouts)."""
        files = find_files(self.path, (".fits", ".fit", ".fits.gz"), "GalaxyFits")

        def parts():
            from astropy.io import fits

            for i, f in enumerate(files):
                try:
                    with fits.open(f) as hdul:
                        data, header = hdul[0].data, hdul[0].header
                except OSError as e:
                    raise ValueError(f"{f}: not a readable FITS file ({e})") from None
                if data is None or data.ndim != 3 or data.shape[0] != len(self.bands):
                    raise ValueError(
                        f"{f}: expected a [{len(self.bands)}, S, S] cutout (data.source.bands), got "
                        f"{None if data is None else data.shape}"
                    )
                size = data.shape[-1]
                defaults = (size / 2 - 0.5, size / 2 - 0.5, size / 8, size / 8, 0.0)
                yield (
                    f,
                    {
                        "object_id": np.array([int(header.get("OBJID", i))], np.int64),
                        "image": np.asarray(data, np.float32)[None],
                        **{
                            k: np.array([float(header.get(k.upper(), d))], np.float32)
                            for k, d in zip(ELLIPSE, defaults, strict=True)
                        },
                    },
                )

        key = {"files": [file_stamp(f) for f in files], "bands": self.bands, "version": 1}
        columns = cached_galaxies(data_dir, "fits", key, len(files), parts)
        return GalaxyTable(
            **{k: columns[k] for k in ("object_id", "image", *ELLIPSE)},
            catalog=np.zeros((len(files), 0), np.float32),
            catalog_columns=[],
            bands=self.bands,
            origin=str(self.path),
        )


class GalaxyImages(Dataset):
    """The objects `rows` of a table, read and normalized a batch at a time (the table's images may be a memory map
    larger than RAM): {"image": robust arcsinh [B, bands, S, S], "weight": ellipse loss weights [B, 1, S, S],
    "row": the objects' rows in the table}."""

    def __init__(self, table: GalaxyTable, rows: torch.Tensor, mask_scale: float, outside_weight: float):
        self.table, self.rows, self.mask_scale, self.outside_weight = table, rows, mask_scale, outside_weight

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = self.rows[torch.as_tensor(idx, dtype=torch.long)]
        order = rows.argsort()  # read a memory map in file order, then put the batch back in its own
        picked = rows[order].numpy()
        image = torch.empty(len(rows), *self.table.image.shape[1:])
        image[order] = robust_arcsinh(torch.from_numpy(np.asarray(self.table.image[picked], dtype=np.float32)))
        ellipse = (torch.from_numpy(np.asarray(getattr(self.table, k))[rows.numpy()]) for k in ELLIPSE)
        weight = ellipse_weights(image.shape[-1], *ellipse, scale=self.mask_scale, outside=self.outside_weight)
        return {"image": image, "weight": weight, "row": rows}


class GalaxyObjects(GalaxyImages):
    """GalaxyImages with every modality the table has, for the token export: also "catalog" [B, C] float32 (NaN =
    missing) and "spectrum", "spectrum_ivar" [B, L] float32 (where the table has spectra)."""

    def __getitems__(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = super().__getitems__(idx)
        rows = batch["row"].numpy()
        batch["catalog"] = torch.from_numpy(np.asarray(self.table.catalog, np.float32)[rows])
        if self.table.spectrum is not None:
            batch["spectrum"] = torch.from_numpy(np.asarray(self.table.spectrum, np.float32)[rows])
            batch["spectrum_ivar"] = torch.from_numpy(np.asarray(self.table.spectrum_ivar, np.float32)[rows])
        return batch


class GalaxyObjectsAdapter(GalaxyImageAdapter):
    """Batches of GalaxyObjects for the galaxy tokenizers together (tokenizers.astro.GalaxyTokenizers): x the image,
    cond its catalog and spectrum (those the batch has)."""

    def unpack(self, batch: dict[str, torch.Tensor]) -> ModelInput:
        cond = {k: batch[k] for k in ("catalog", "spectrum", "spectrum_ivar") if k in batch}
        return ModelInput(batch["image"], cond, batch["image"], batch["weight"])


class GalaxyDataModule(SplitDataModule):
    """Objects split train/val/test by a seeded permutation; images normalized a batch at a time (GalaxyImages), so
    a memory-mapped image array of any size is never read whole."""

    def __init__(
        self,
        source,
        adapter: BatchAdapter | None = None,
        data_dir: str = "data",
        bands: int | None = None,
        mask_scale: float = 4.0,
        outside_weight: float = 0.3,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__(adapter or GalaxyImageAdapter(), batch_size, eval_batch_size, split, seed, num_workers)
        self.source, self.data_dir, self.bands = source, data_dir, bands
        self.mask_scale, self.outside_weight = mask_scale, outside_weight
        self.table: GalaxyTable | None = None
        self.rows: dict[str, torch.Tensor] = {}
        self._fingerprint: str | None = None

    def prepare_data(self) -> None:
        if hasattr(self.source, "prepare"):
            self.source.prepare(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        table = self.source.load(self.data_dir).validate(self.bands)
        if len(table) < 3:
            raise ValueError(f"{table.origin}: {len(table)} objects cannot be split into train/val/test")
        self.table = table
        self.rows = split_indices(len(table), self.split, self.seed)
        self.splits = {
            name: GalaxyImages(table, rows, self.mask_scale, self.outside_weight) for name, rows in self.rows.items()
        }

    @property
    def metadata(self) -> DataMetadata:
        """Per object and band robust arcsinh (tokenizers.astro.robust_arcsinh); variables: the band names."""
        bands = self.table.bands if self.table is not None else []
        return DataMetadata(kind=self.adapter.kind, normalization="robust_arcsinh", variables=list(bands))

    def use_statistics(self, metadata: DataMetadata) -> None:
        """Each object is normalized on its own (robust arcsinh): the tokenizer's data must have these bands."""
        if metadata.normalization != "robust_arcsinh" or list(metadata.variables) != list(self.table.bands):
            raise ValueError(
                f"the tokenizer was trained on bands {metadata.variables} ({metadata.normalization}); this data "
                f"({self.table.origin}) has bands {self.table.bands}: give the data it was trained on"
            )

    def fingerprint(self) -> str:
        """sha256 of every modality's values and of the train/val split (computed once: it reads every image)."""
        if self._fingerprint is None:
            t = self.table
            self._fingerprint = arrays_fingerprint(
                t.object_id,
                t.image,
                t.catalog,
                t.spectrum,
                t.spectrum_ivar,
                self.rows["train"].numpy(),
                self.rows["val"].numpy(),
            )
        return self._fingerprint

    def encode_set(self, split: str) -> tuple[GalaxyObjects, np.ndarray, dict]:
        """(the split's objects in their fixed order, with every modality; index [N] of (object_id, has_catalog,
        has_spectrum) per row: a catalog row with at least one finite value (its missing columns are MISS tokens), a
        spectrum with at least one pixel of ivar > 0; what they depend on: the data's fingerprint, origin, bands,
        catalog columns)."""
        rows = self.rows[split].numpy()
        t = self.table
        index = np.zeros(len(rows), [("object_id", "i8"), ("has_catalog", "?"), ("has_spectrum", "?")])
        index["object_id"] = np.asarray(t.object_id)[rows]
        index["has_catalog"] = np.isfinite(np.asarray(t.catalog)[rows]).any(1)
        if t.spectrum_ivar is not None:
            index["has_spectrum"] = (np.asarray(t.spectrum_ivar)[rows] > 0).any(1)
        about = {
            "fingerprint": self.fingerprint(),
            "origin": t.origin,
            "objects": len(t),
            "bands": list(t.bands),
            "catalog_columns": list(t.catalog_columns),
        }
        return GalaxyObjects(t, self.rows[split], self.mask_scale, self.outside_weight), index, about

    def make_train_sampler(self) -> EpochShuffleSampler:
        return EpochShuffleSampler(len(self.splits["train"]), self.seed)
