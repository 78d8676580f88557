"""Token stores: what `encode.py` writes for every tokenizer and the downstream transformers read, one folder per
split, readable with numpy alone.

    <out_dir>/<split>/<stream>.npy   [N, *grid] ids, the smallest unsigned dtype that holds the stream's vocabulary
                      index.npy      [N] structured: what each row is (fields: dataset, variable, trajectory, time;
                                     EEG: recording, channel, rate, start; galaxies: object_id, has_catalog,
                                     has_spectrum; images: image, tile)
                      meta.json      format, kind, streams {name: vocabulary}, grid per stream, the tokenizer
                                     checkpoint(s) and sha256, the split's members, the normalization (DataMetadata),
                                     the data description and config, the key that decides reuse
A split is written into a temporary folder and renamed when complete (SplitStoreWriter): a reader never sees half a
store, and a killed export leaves only a temporary folder that the next run removes. `open_store` opens the three
splits for a transformer, `store_tokenizer` and `stored_data` give back the tokenizer and the data a store names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokenizers.load import UNREADABLE, atomic_write, check_targets


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def arrays_fingerprint(*arrays: np.ndarray | None, chunk_rows: int = 512) -> str:
    """sha256 over the arrays' shapes, dtypes and bytes (read in chunks of rows: they may be memory maps)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        h.update(f"{a.shape}{a.dtype}".encode())
        for start in range(0, len(a), chunk_rows):
            h.update(np.ascontiguousarray(a[start : start + chunk_rows]).tobytes())
    return h.hexdigest()


STORE_FORMAT = "scitok-token-store/1"


def id_dtype(vocabulary: int) -> np.dtype:
    """The smallest unsigned integer dtype holding ids 0 … vocabulary − 1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocabulary <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


@dataclass
class SplitStore:
    """One split of a token store, memory-mapped: tokens[stream] [N, *grid], index [N] (structured), meta."""

    path: Path
    tokens: dict[str, np.ndarray]
    index: np.ndarray
    meta: dict

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def open(cls, path: str | Path) -> SplitStore:
        """Open `<out_dir>/<split>` (nothing is read but headers); errors name the folder and what is wrong."""
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{path} is not a token store (no meta.json): write it with python encode.py")
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as e:
            raise ValueError(f"{meta_path} cannot be read ({e}); write the store again (python encode.py)") from e
        if meta.get("format") != STORE_FORMAT:
            raise ValueError(f"{path}: store format {meta.get('format')!r}, this SciTok reads {STORE_FORMAT!r}")
        try:
            index = np.load(path / "index.npy", mmap_mode="r", allow_pickle=False)
            tokens = {s: np.load(path / f"{s}.npy", mmap_mode="r", allow_pickle=False) for s in meta["streams"]}
        except UNREADABLE as e:
            raise ValueError(
                f"{path}: a file of the store cannot be read ({e}); write it again (python encode.py)"
            ) from e
        for s, ids in tokens.items():
            if len(ids) != len(index):
                raise ValueError(f"{path}/{s}.npy has {len(ids)} rows, index.npy {len(index)}: the store is damaged")
        return cls(path, tokens, index, meta)


SPLITS = ("train", "val", "test")
# What a data config recorded in a store may name to be built again: SciTok's datamodules, sources and adapters.
STORED_DATA_TARGETS = {"datamodules": lambda obj: isinstance(obj, type)}


def open_store(store: str | Path, kinds: dict[str, str], splits: Sequence[str] = SPLITS) -> dict[str, SplitStore]:
    """The splits of the token store `store` (encode.py's out_dir: `<store>/<split>/`), made by a tokenizer of one of
    `kinds` ({data kind: the experiment that trains such a tokenizer}). Refused, naming the store and what is wrong:
    a missing split, a store of another kind (by its tokenizer's class and kind), splits made by different
    checkpoints or with different streams."""
    if store is None or str(store) in ("", "None"):
        raise ValueError("data.store is not set: " + pipeline_hint(kinds))
    store = Path(store).expanduser()
    missing = [s for s in splits if not (store / s / "meta.json").is_file()]
    if missing:
        raise FileNotFoundError(f"data.store={store} has no token store of split(s) {missing}: " + pipeline_hint(kinds))
    out = {s: SplitStore.open(store / s) for s in splits}
    first = out[splits[0]].meta
    for part in out.values():
        meta = part.meta
        if meta.get("kind") not in kinds:
            raise ValueError(
                f"{part.path}: a store of {meta.get('tokenizer', {}).get('class', '?')} tokens of {meta.get('kind')} "
                f"data; this transformer reads the tokens of {' or '.join(kinds)} data (" + pipeline_hint(kinds) + ")"
            )
        for key in ("tokenizer", "streams", "kind"):
            if meta.get(key) != first.get(key):
                raise ValueError(
                    f"{part.path} and {out[splits[0]].path} differ in {key} ({meta.get(key)} vs {first.get(key)}): "
                    "the splits of one store come from one encode.py run"
                )
    return out


def pipeline_hint(kinds: dict[str, str]) -> str:
    experiment = next(iter(kinds.values()))
    return (
        f"make one with `python train.py experiment={experiment}`, then `python encode.py "
        f"ckpt=outputs/{experiment}/<run>/checkpoints/last.ckpt`, and give its out_dir "
        f"(default <run>/checkpoints/last-tokens) as data.store=<dir>"
    )


def store_tokenizer(meta: dict, where: str | Path) -> torch.nn.Module:
    """The tokenizer a store was made with: its checkpoint as meta.json names it, refused if it is gone or is not the
    file it was (sha256)."""
    from tokenizers import load_tokenizer

    about = meta["tokenizer"]
    path = Path(about["checkpoint"])
    if not path.is_file():
        raise FileNotFoundError(
            f"{where}: the tokenizer checkpoint {path} the store was made with is gone; its decoder and code vectors "
            "are needed (encode again with the checkpoint you have)"
        )
    if file_sha256(path) != about["sha256"]:
        raise ValueError(
            f"{where}: the tokenizer checkpoint {path} changed since the store was written (sha256 differs): its ids "
            f"would be decoded by another model; encode again (python encode.py ckpt={path})"
        )
    return load_tokenizer(path)


def stored_data(meta: dict, where: str | Path):
    """The datamodule the store was encoded from (meta.json `data_config`, read as data: only SciTok's datamodules
    may be named; the adapter's metric is not built), set up. Its `encode_set(split)` gives the store's rows in
    order, once the caller has applied the tokenizer's statistics (use_statistics) and checked that the data have not
    changed since (tokens.StoreSequences.truth compares each split's index and description with the store's)."""
    from hydra.utils import instantiate

    spec = meta.get("data_config")
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: meta.json records no data config (a store older than this SciTok): encode again")
    spec = json.loads(json.dumps(spec))  # a copy
    if isinstance(spec.get("adapter"), dict):
        spec["adapter"].pop("metric", None)
    check_targets(spec, source=f"{where}/meta.json (data_config)", allowed=STORED_DATA_TARGETS)
    datamodule = instantiate(spec, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


class NpyRows:
    """A .npy file of shape [n_rows, *row] written a block of consecutive rows at a time with positioned writes
    (os.pwrite), and read back the same way: the rows pass through the page cache, never through this process's
    memory map, so a writer's resident memory stays that of one block whatever the file's size."""

    def __init__(self, path: Path, dtype: np.dtype | None = None, shape: tuple[int, ...] = ()):
        """dtype and shape given: create the file (its size set, rows zero until written); None: open it to read."""
        self.path = path
        if dtype is not None:
            self.dtype, self.shape = np.dtype(dtype), tuple(shape)
            header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
            with open(path, "wb") as f:
                np.lib.format.write_array_header_1_0(f, header)
                self.offset = f.tell()
        else:
            with open(path, "rb") as f:
                np.lib.format.read_magic(f)
                self.shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                self.offset, self.dtype = f.tell(), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.fd = os.open(path, os.O_RDWR if dtype is not None else os.O_RDONLY)
        if dtype is not None:
            os.ftruncate(self.fd, self.offset + self.shape[0] * self.row_bytes)

    def write(self, start: int, rows: np.ndarray) -> None:
        os.pwrite(self.fd, np.ascontiguousarray(rows, self.dtype).tobytes(), self.offset + start * self.row_bytes)

    def read(self, start: int, stop: int) -> np.ndarray:
        data = os.pread(self.fd, (stop - start) * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(data, self.dtype).reshape(stop - start, *self.shape[1:])

    def close(self) -> None:
        os.close(self.fd)


class SplitStoreWriter:
    """Writes one split: `rows(start, tokens)` writes consecutive rows (positioned writes: any size, the memory of a
    block), `commit(index, meta)` writes index and meta and renames the folder into place (atomic_write; an older
    store of the split is replaced). Used as a context manager, an error removes the temporary folder."""

    def __init__(self, path: str | Path, n_rows: int, streams: dict[str, int], grids: dict[str, tuple[int, ...]]):
        self.path = Path(path)
        for stale in self.path.parent.glob(f".{self.path.name}.tmp-*"):  # killed exports' leftovers (other pids)
            shutil.rmtree(stale, ignore_errors=True)
        self._rename = contextlib.ExitStack()
        self.tmp = self._rename.enter_context(atomic_write(self.path))
        self.tmp.mkdir()
        self.streams, self.n_rows = dict(streams), n_rows
        self.files = {s: NpyRows(self.tmp / f"{s}.npy", id_dtype(v), (n_rows, *grids[s])) for s, v in streams.items()}
        self.n_written = 0

    def rows(self, start: int, tokens: dict[str, np.ndarray]) -> None:
        """Rows start … start + n − 1 of every stream: tokens[stream] [n, *grid] (ids checked against the
        vocabulary)."""
        for s, ids in tokens.items():
            if ids.size and (ids.min() < 0 or ids.max() >= self.streams[s]):
                raise ValueError(f"stream {s!r}: ids outside [0, {self.streams[s]}) ({ids.min()}…{ids.max()})")
            self.files[s].write(start, ids)
        self.n_written += len(next(iter(tokens.values())))

    def commit(self, index: np.ndarray, meta: dict) -> Path:
        if self.n_written != self.n_rows:
            raise RuntimeError(f"{self.path}: {self.n_written} of {self.n_rows} rows were written")
        self.close()
        np.save(self.tmp / "index.npy", index, allow_pickle=False)
        (self.tmp / "meta.json").write_text(json.dumps({"format": STORE_FORMAT, **meta}, indent=1))
        old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
        if self.path.exists():  # an older store of this split (another checkpoint or data): a folder is only
            os.replace(self.path, old)  # renamed onto a missing one
        self._rename.close()
        shutil.rmtree(old, ignore_errors=True)
        return self.path

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files = {}

    def __enter__(self) -> SplitStoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        self._rename.__exit__(*exc)  # after commit: nothing left to do; else the temporary folder is removed
