"""Tokens as files: `python encode.py ckpt=<tokenizer checkpoint>` writes a token store per split.

The checkpoint says which tokenizer it holds and the data kind it was trained on. The data are those of the
checkpoint's training run (its `config_resolved.yaml`, read as data: only SciTok's own classes may be named) unless
`data=<config>` is given; `splits=[train,val,test]`, `out_dir=` (default: `<checkpoint folder>/<checkpoint
name>-tokens/`), and the `paths` and `trainer` groups of train.py (`trainer=ddp_cpu` encodes in 2 processes).

Every split's samples go through the tokenizer in Lightning's predict loop (lit_modules/encoding.py) into
`<out_dir>/<split>/` (datamodules/token_store.py: `<stream>.npy` memory-mapped, `index.npy`, `meta.json`). A store
whose key (the tokenizer checkpoints' sha256, data, split) matches is reused.
- Fields, EEG, images: the tokenizer's `encode`, the samples normalized with the checkpoint's statistics
  (`normalize=checkpoint`), or the data's own train split's (`normalize=data`: released weights, which carry none, or
  data of other variables); meta.json `normalization` records which, and the transformer reads the store with it.
- Galaxies (an `astro_image` checkpoint): one row per object, streams image, catalog (one id per catalog column) and
  spectrum (tokenizers.astro.GalaxyTokenizers). The catalog-scalar tokenizer (quantile bins) and the spectrum
  tokenizer (K-means) are fitted on the train split, or reused: checkpoints in out_dir named after the data
  fingerprint, loadable with `tokenizers.load_tokenizer`, each named in meta.json `tokenizers` with its sha256. The
  index says which objects have a catalog row and a spectrum. `experiment=astro_transformer data.store=<out_dir>`
  reads them.
Stores and tokenizers are written atomically. Runs on the GPU when there is one.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datamodules.common import SplitDataModule, cache_key
from datamodules.galaxies import GalaxyDataModule, GalaxyObjectsAdapter
from datamodules.token_store import SplitStore, SplitStoreWriter, file_sha256
from lit_modules.checkpoint_io import run_config
from lit_modules.encoding import EncodeData, EncodeModule, ShardWriter, merge_shards, shard_folder
from tokenizers import load_tokenizer, save_tokenizer
from tokenizers.astro import GalaxyImageTokenizer, GalaxyTokenizers, ScalarQuantileTokenizer, SpectrumTokenizer
from tokenizers.base import DataMetadata
from tokenizers.load import check_targets

log = logging.getLogger("scitok.encode")

# What a data config read from a file may name: SciTok's datamodules, sources and adapters, and its metrics.
DATA_TARGETS = {
    "datamodules": lambda obj: isinstance(obj, type),
    "lit_modules.metrics": lambda obj: isinstance(obj, type),
}


def fit_scalars(data: GalaxyDataModule, bins: int, out_dir: Path, fingerprint: str) -> Path | None:
    table = data.table
    if not table.catalog_columns:
        return None
    path = out_dir / f"scalars-{bins}-{fingerprint[:16]}.pt"
    if path.is_file():
        log.info("reusing the scalar tokenizer %s", path)
        return path
    spec = {
        "_target_": "tokenizers.astro.ScalarQuantileTokenizer",
        "columns": list(table.catalog_columns),
        "bins": bins,
    }
    tokenizer = ScalarQuantileTokenizer(table.catalog_columns, bins)
    tokenizer.fit(torch.from_numpy(np.asarray(table.catalog)[data.rows["train"].numpy()]))
    metadata = DataMetadata(kind="galaxy_catalog", normalization="none", variables=list(table.catalog_columns))
    log.info(
        "fitted the scalar tokenizer (%d columns × %d bins) on %d train objects",
        len(table.catalog_columns),
        bins,
        len(data.rows["train"]),
    )
    return save_tokenizer(tokenizer, spec, metadata, path)


def fit_spectra(data: GalaxyDataModule, cfg: DictConfig, out_dir: Path, fingerprint: str, device: str) -> Path | None:
    table = data.table
    if table.spectrum is None:
        return None
    params = {"pixels": int(table.spectrum.shape[1]), "patch": int(cfg.patch), "codebook_size": int(cfg.codebook_size)}
    path = out_dir / f"spectra-{params['patch']}-{params['codebook_size']}-{fingerprint[:16]}.pt"
    if path.is_file():
        log.info("reusing the spectrum tokenizer %s", path)
        return path
    rows = data.rows["train"].numpy()
    tokenizer = SpectrumTokenizer(**params).to(device)
    stats = tokenizer.fit(
        torch.from_numpy(np.asarray(table.spectrum)[rows]).to(device),
        torch.from_numpy(np.asarray(table.spectrum_ivar)[rows]).to(device),
        max_vectors=int(cfg.max_vectors),
        iters=int(cfg.iters),
    )
    log.info("fitted the spectrum tokenizer on %d train spectra: %s", len(rows), stats)
    metadata = DataMetadata(kind="galaxy_spectra", normalization="robust", variables=["flux"])
    return save_tokenizer(tokenizer.cpu(), {"_target_": "tokenizers.astro.SpectrumTokenizer", **params}, metadata, path)


def galaxy_tokenizers(
    cfg: DictConfig, ckpt: Path, image: GalaxyImageTokenizer, data: GalaxyDataModule, out_dir: Path
) -> tuple[GalaxyTokenizers, dict[str, Path]]:
    """The image tokenizer of `ckpt` with the catalog-scalar and spectrum tokenizers of the data (fitted on its train
    split, or reused from out_dir by the data's fingerprint), as one encoder; and each one's checkpoint."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = data.fingerprint()
    checkpoints = {"image": ckpt}
    for name, path in (
        ("scalars", fit_scalars(data, int(cfg.scalars.bins), out_dir, fingerprint)),
        ("spectra", fit_spectra(data, cfg.spectra, out_dir, fingerprint, device)),
    ):
        if path is not None:
            checkpoints[name] = path
    parts = {name: load_tokenizer(path) for name, path in checkpoints.items() if name != "image"}
    return GalaxyTokenizers(image, **parts), checkpoints


def output_dir(cfg: DictConfig, ckpt: Path) -> Path:
    """cfg.out_dir, or by default `<checkpoint folder>/<checkpoint name>-tokens/` (the tokens beside their
    tokenizer)."""
    if cfg.get("out_dir"):
        return Path(cfg.out_dir)
    return ckpt.parent / f"{ckpt.stem}-tokens"


def about_checkpoint(tokenizer: torch.nn.Module, ckpt: Path, sha: str) -> dict:
    """What a store records of a tokenizer checkpoint: its class, resolved path and sha256."""
    return {"class": type(tokenizer).__name__, "checkpoint": str(Path(ckpt).resolve()), "sha256": sha}


def training_data_config(ckpt: Path) -> dict:
    """The data config of the run that wrote `ckpt` (its run dir's config_resolved.yaml, which train.py writes), as
    plain data whose `_target_`s must be SciTok's own (a shared file must not run code)."""
    resolved = run_config(ckpt)
    if not resolved.is_file():
        raise FileNotFoundError(
            f"ckpt={ckpt}: no {resolved} to take the training data from (a checkpoint outside its run dir); "
            "name the data: data=<config> (e.g. data=fields_hdf5 data.source.path=/my/run.hdf5)"
        )
    data = OmegaConf.to_container(OmegaConf.load(resolved), resolve=False).get("data")
    if not isinstance(data, dict):
        raise ValueError(f"{resolved} has no data config; name the data: data=<config>")
    check_targets(data, source=f"{resolved} (data)", allowed=DATA_TARGETS)
    return data


def checked_tokenizer(ckpt: Path) -> torch.nn.Module:
    """load_tokenizer(ckpt), refused naming the file when it is missing or no tokenizer checkpoint, holds no data
    metadata (which says what data it encodes), or is a galaxy image tokenizer whose codebook was never fitted."""
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt={ckpt} does not exist (train a tokenizer: python train.py experiment=phaedra)")
    try:
        tokenizer = load_tokenizer(ckpt)
    except ValueError as e:
        raise ValueError(f"ckpt={ckpt} is not a tokenizer checkpoint: {e}") from e
    if tokenizer.metadata is None:
        raise ValueError(f"ckpt={ckpt} holds no data metadata (written before DataMetadata): retrain it")
    if isinstance(tokenizer, GalaxyImageTokenizer) and not tokenizer.fitted:
        raise ValueError(
            f"ckpt={ckpt}: its GalaxyImageTokenizer has no fitted codebook (a checkpoint from before stage 2); use "
            "the run's checkpoints/last.ckpt"
        )
    return tokenizer


def build_data(cfg: DictConfig, ckpt: Path, tokenizer: torch.nn.Module) -> tuple[SplitDataModule, dict]:
    """The data to encode, set up, and its config as plain data (resolved: a store records it, so that the
    transformer reads the true data of each row); data of another kind than the tokenizer's is refused before any is
    read."""
    given = cfg.get("data") is not None
    spec = OmegaConf.to_container(cfg.data, resolve=True) if given else training_data_config(ckpt)
    datamodule = instantiate(spec, _convert_="all")
    kind, trained_on = getattr(datamodule.adapter, "kind", None), tokenizer.metadata.kind
    if kind != trained_on:
        raise ValueError(
            f"ckpt={ckpt} holds a {type(tokenizer).__name__} trained on {trained_on} data; the data config gives "
            f"{kind} data ({type(datamodule).__name__}): give data=<a {trained_on} data config>"
        )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule, spec


NORMALIZE = ("checkpoint", "data")


def apply_normalization(how: str, datamodule, tokenizer: torch.nn.Module, ckpt: Path) -> DataMetadata:
    """normalize=checkpoint: the statistics the tokenizer was trained with (the datamodule's use_statistics);
    normalize=data: the data's own train split's (a user's file of other variables, released weights, which carry
    none). Returns the DataMetadata the samples are normalized with."""
    if how not in NORMALIZE:
        raise ValueError(
            f"normalize={how}: choose checkpoint (the tokenizer's training statistics) or data (the data's own train "
            "split's)"
        )
    if how == "data":
        return datamodule.metadata
    try:
        datamodule.use_statistics(tokenizer.metadata)
    except ValueError as e:
        hint = (  # fields carry statistics per variable; other kinds normalize each sample on its own
            ". A tokenizer's statistics fit only the variables it was trained on; for data of other variables (e.g. "
            "your own .npy) or released weights, normalize with the data's own train split's statistics: "
            "normalize=data"
            if tokenizer.metadata.kind == "fields"
            else ""
        )
        raise ValueError(f"normalize=checkpoint with ckpt={ckpt}: {e}{hint}") from e
    return tokenizer.metadata


def encode(cfg: DictConfig) -> dict[str, Path]:
    """Write (or find) the token store of every split in cfg.splits for the tokenizer in cfg.ckpt; returns split ->
    store path."""
    ckpt = Path(cfg.ckpt)
    tokenizer = checked_tokenizer(ckpt)
    meta = tokenizer.metadata
    unknown = sorted(set(cfg.splits) - {"train", "val", "test"})
    if unknown:
        raise ValueError(f"splits: unknown {unknown}; choose from ['test', 'train', 'val']")
    datamodule, data_config = build_data(cfg, ckpt, tokenizer)
    if not hasattr(datamodule, "encode_set"):
        raise ValueError(f"encode.py cannot yet export {meta.kind} data ({type(datamodule).__name__})")
    normalization = apply_normalization(str(cfg.normalize), datamodule, tokenizer, ckpt)
    out_dir, sha = output_dir(cfg, ckpt), file_sha256(ckpt)
    facts = {
        "kind": meta.kind,
        "tokenizer": about_checkpoint(tokenizer, ckpt, sha),
        "normalization": normalization.to_dict(),
        "data_config": data_config,
    }
    adapter = datamodule.adapter
    if isinstance(tokenizer, GalaxyImageTokenizer):  # with the catalog and spectrum tokenizers, one row per object
        image = tokenizer
        tokenizer, checkpoints = galaxy_tokenizers(cfg, ckpt, image, datamodule, out_dir)
        parts = {"image": image, "scalars": tokenizer.scalars, "spectra": tokenizer.spectra}
        sha = {name: file_sha256(path) for name, path in checkpoints.items()}
        facts["tokenizers"] = {n: about_checkpoint(parts[n], path, sha[n]) for n, path in checkpoints.items()}
        facts["catalog_columns"] = list(datamodule.table.catalog_columns) if "scalars" in checkpoints else []
        facts["bands"] = list(datamodule.table.bands)
        adapter = GalaxyObjectsAdapter()
    stores = {}
    for split in cfg.splits:
        stores[split] = encode_split_store(cfg, sha, tokenizer, datamodule, adapter, facts, split, out_dir / split)
    return stores


def encode_split_store(
    cfg: DictConfig,
    sha: str | dict[str, str],
    tokenizer: torch.nn.Module,
    datamodule,
    adapter,
    facts: dict,
    split: str,
    path: Path,
) -> Path:
    """One split's store at `path`: reused when its key matches, else encoded through trainer.predict (every rank
    its share into a shard; rank 0 merges them into the store and renames it into place). sha: the tokenizer
    checkpoint's sha256 (galaxies: each of the image, scalar and spectrum tokenizers'); adapter: turns the batches
    of `datamodule.encode_set(split)` into the tokenizer's input; facts: what meta.json records beside the split's
    own entries (kind, tokenizer, normalization, data_config, …)."""
    dataset, index, about = datamodule.encode_set(split)
    key = cache_key({"tokenizer_sha256": sha, "data": about, "split": split, "metadata": facts["normalization"]})
    if (path / "meta.json").is_file():
        try:
            meta = SplitStore.open(path).meta
            if meta.get("key") == key and "data_config" in meta:  # older stores record no data config: write again
                log.info("reusing the token store %s", path)
                return path
        except (OSError, ValueError) as e:  # a store is a cache of tokens: write it again
            log.warning("token store %s cannot be read (%s); writing it again", path, e)
    with torch.no_grad():  # each stream's token grid, from one sample
        example = adapter.unpack(dataset.__getitems__([0]))
        grids = {s: tuple(ids.shape[1:]) for s, ids in tokenizer.encode(example.x, **example.cond).items()}
    streams = dict(tokenizer.streams)
    shards = shard_folder(path)
    writer = ShardWriter(shards, len(dataset), streams, grids)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[writer], enable_checkpointing=False)
    try:
        trainer.predict(
            EncodeModule(tokenizer, adapter),
            datamodule=EncodeData(dataset, int(cfg.batch_size), int(cfg.num_workers)),
            return_predictions=False,
        )
    except BaseException:  # the shards of an export that did not finish are never read: remove them
        shutil.rmtree(shards, ignore_errors=True)
        raise
    trainer.strategy.barrier()
    if trainer.global_rank == 0:
        with SplitStoreWriter(path, len(dataset), streams, grids) as store:
            merge_shards(store, shards, trainer.world_size)
            store.commit(
                index,
                {
                    "key": key,
                    "split": split,
                    "streams": streams,
                    "grid": {s: list(g) for s, g in grids.items()},
                    **facts,
                    "data": about,
                    "rows": len(dataset),
                    "index_columns": list(index.dtype.names),
                },
            )
        log.info("wrote %s: %d rows, streams %s of grid %s", path, len(dataset), streams, grids)
    trainer.strategy.barrier()
    return path


@hydra.main(version_base="1.3", config_path="conf", config_name="encode")
def main(cfg: DictConfig) -> None:
    for split, path in encode(cfg).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
