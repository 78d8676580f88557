"""Tokens as files: `python encode.py ckpt=<tokenizer checkpoint>` writes a token store per split.

The checkpoint says which tokenizer it holds and the data kind it was trained on. The data are those of the
checkpoint's training run (its `config_resolved.yaml`, read as data: only SciTok's own classes may be named) unless
`data=<config>` is given; `splits=[train,val,test]`, `out_dir=` (default: `<checkpoint folder>/<checkpoint
name>-tokens/`), and the `paths` and `trainer` groups of train.py (`trainer=ddp_cpu` encodes in 2 processes).

- Fields, EEG (any tokenizer whose data kind is "fields" or "eeg"): every sample of each split through
  `tokenizer.encode` in Lightning's predict loop (lit_modules/encoding.py) into `<out_dir>/<split>/`
  (datamodules/token_store.py: `<stream>.npy` memory-mapped, `index.npy`, `meta.json`). The samples are normalized
  with the checkpoint's statistics. A store whose key (checkpoint sha256, data, split) matches is reused.
- Galaxies (an `astro_image` checkpoint): fits the catalog-scalar tokenizer (quantile bins) and the spectrum
  tokenizer (K-means) on the train split, or reuses them (checkpoints in out_dir named after the data fingerprint,
  loadable with `tokenizers.load_tokenizer`), and encodes every split with the three into
  `<out_dir>/<split>-<key>.npz` (TokenStore; out_dir by default `<paths.data_dir>/tokens`), read by
  `experiment=astro_transformer`.
Stores and tokenizers are written atomically. Runs on the GPU when there is one.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datamodules.common import SplitDataModule, cache_key
from datamodules.galaxies import GalaxyDataModule
from datamodules.token_store import SplitStore, SplitStoreWriter, TokenStore, arrays_fingerprint, file_sha256
from lit_modules.checkpoint_io import run_config
from lit_modules.encoding import EncodeData, EncodeModule, ShardWriter, merge_shards, shard_folder
from tokenizers import load_tokenizer, save_tokenizer
from tokenizers.astro import GalaxyImageTokenizer, ScalarQuantileTokenizer, SpectrumTokenizer
from tokenizers.base import DataMetadata
from tokenizers.load import atomic_write, check_targets

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


@torch.no_grad()
def encode_split(
    data: GalaxyDataModule, split: str, models: dict[str, torch.nn.Module], batch_size: int, device: str
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Tokens per stream [N, T] of one split's objects (rows in the split's order) and each stream's vocabulary;
    models: the loaded tokenizers ("image", and "scalars" / "spectra" where the data has them) on `device`."""
    table, rows, objects = data.table, data.rows[split].numpy(), data.splits[split]
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        images = objects.__getitems__(range(start, start + len(part)))["image"]
        tokens = dict(models["image"].encode(images.to(device)))
        if "scalars" in models:
            scalars = models["scalars"].encode(torch.from_numpy(np.asarray(table.catalog)[part]).to(device))
            tokens["catalog"] = torch.cat([scalars[c] for c in table.catalog_columns], 1)
        if "spectra" in models:
            tokens.update(
                models["spectra"].encode(
                    torch.from_numpy(np.asarray(table.spectrum)[part]).to(device),
                    torch.from_numpy(np.asarray(table.spectrum_ivar)[part]).to(device),
                )
            )
        for name, ids in tokens.items():
            out.setdefault(name, []).append(ids.cpu().numpy())
    vocab = dict(models["image"].streams)
    if "scalars" in models:
        vocab["catalog"] = models["scalars"].bins + 1
    if "spectra" in models:
        vocab.update(models["spectra"].streams)
    return {name: np.concatenate(parts) for name, parts in out.items()}, vocab


def presence(table, rows: np.ndarray, tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per stream, which objects have that modality: a spectrum with at least one pixel of ivar > 0, a catalog row
    with at least one finite value (its missing columns are MISS tokens), every image."""
    present = {name: np.ones(len(rows), dtype=bool) for name in tokens}
    if "catalog" in tokens:
        present["catalog"] = np.isfinite(np.asarray(table.catalog)[rows]).any(1)
    if "spectrum" in tokens:
        present["spectrum"] = (np.asarray(table.spectrum_ivar)[rows] > 0).any(1)
    return present


def encode_galaxies(cfg: DictConfig, image_ckpt: Path, image_tokenizer: GalaxyImageTokenizer, data) -> dict[str, Path]:
    """Write (or find) the galaxy token store of every split in cfg.splits; returns split -> store path."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    table = data.table
    out_dir = output_dir(cfg, image_ckpt, galaxies=True)
    fingerprint = arrays_fingerprint(
        table.object_id,
        table.image,
        table.catalog,
        table.spectrum,
        table.spectrum_ivar,
        data.rows["train"].numpy(),
        data.rows["val"].numpy(),
    )
    checkpoints = {"image": image_ckpt}
    for name, path in (
        ("scalars", fit_scalars(data, int(cfg.scalars.bins), out_dir, fingerprint)),
        ("spectra", fit_spectra(data, cfg.spectra, out_dir, fingerprint, device)),
    ):
        if path is not None:
            checkpoints[name] = path
    hashes = {name: file_sha256(path) for name, path in checkpoints.items()}
    stores = {}
    models = None  # loaded once, on the first split that needs encoding
    for split in cfg.splits:
        key = TokenStore.key(split, hashes, fingerprint)
        path = TokenStore.path(out_dir, split, key)
        if path.is_file():
            log.info("reusing the token store %s", path)
            stores[split] = path
            continue
        if models is None:
            models = {name: load_tokenizer(path, map_location=device) for name, path in checkpoints.items()}
        tokens, vocab = encode_split(data, split, models, int(cfg.batch_size), device)
        n = len(data.rows[split])
        meta = {
            "split": split,
            "vocab": vocab,
            "catalog_columns": list(table.catalog_columns),
            "bands": list(table.bands),
            "tokenizers": {k: str(v) for k, v in checkpoints.items()},
            "tokenizer_sha256": hashes,
            "data_fingerprint": fingerprint,
        }
        store = TokenStore(
            np.asarray(table.object_id)[data.rows[split].numpy()],
            tokens,
            presence(table, data.rows[split].numpy(), tokens),
            meta,
        )
        stores[split] = store.save(path)
        log.info("wrote %s: %d objects, %s", path, n, {k: v.shape[1] for k, v in tokens.items()})
    with atomic_write(out_dir / "latest.json") as tmp:
        tmp.write_text(json.dumps({k: str(v) for k, v in stores.items()}, indent=2))
    return stores


def output_dir(cfg: DictConfig, ckpt: Path, galaxies: bool = False) -> Path:
    """cfg.out_dir, or by default `<checkpoint folder>/<checkpoint name>-tokens/` (the tokens beside their
    tokenizer); galaxies: `<paths.data_dir>/tokens/`, where experiment=astro_transformer looks for its stores."""
    if cfg.get("out_dir"):
        return Path(cfg.out_dir)
    return Path(cfg.paths.data_dir) / "tokens" if galaxies else ckpt.parent / f"{ckpt.stem}-tokens"


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


def encode(cfg: DictConfig) -> dict[str, Path]:
    """Write (or find) the token store of every split in cfg.splits for the tokenizer in cfg.ckpt; returns split ->
    store path."""
    ckpt = Path(cfg.ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt={ckpt} does not exist (train a tokenizer: python train.py experiment=phaedra)")
    tokenizer = load_tokenizer(ckpt)
    meta = tokenizer.metadata
    if meta is None:
        raise ValueError(f"ckpt={ckpt} holds no data metadata (written before DataMetadata): retrain it")
    unknown = sorted(set(cfg.splits) - {"train", "val", "test"})
    if unknown:
        raise ValueError(f"splits: unknown {unknown}; choose from ['test', 'train', 'val']")
    if isinstance(tokenizer, GalaxyImageTokenizer) and not tokenizer.fitted:
        raise ValueError(
            f"ckpt={ckpt}: its GalaxyImageTokenizer has no fitted codebook (a checkpoint from before stage 2); use "
            "the run's checkpoints/last.ckpt"
        )
    datamodule, data_config = build_data(cfg, ckpt, tokenizer)
    if isinstance(tokenizer, GalaxyImageTokenizer):
        return encode_galaxies(cfg, ckpt, tokenizer, datamodule)
    if not hasattr(datamodule, "encode_set"):
        raise ValueError(f"encode.py cannot yet export {meta.kind} data ({type(datamodule).__name__})")
    datamodule.use_statistics(meta)
    out_dir, sha = output_dir(cfg, ckpt), file_sha256(ckpt)
    stores = {}
    for split in cfg.splits:
        stores[split] = encode_split_store(cfg, ckpt, sha, tokenizer, datamodule, data_config, split, out_dir / split)
    return stores


def encode_split_store(
    cfg: DictConfig,
    ckpt: Path,
    sha: str,
    tokenizer: torch.nn.Module,
    datamodule,
    data_config: dict,
    split: str,
    path: Path,
) -> Path:
    """One split's store at `path`: reused when its key matches, else encoded through trainer.predict (every rank
    its share into a shard; rank 0 merges them into the store and renames it into place)."""
    dataset, index, about = datamodule.encode_set(split)
    key = cache_key({"tokenizer_sha256": sha, "data": about, "split": split, "metadata": tokenizer.metadata.to_dict()})
    if (path / "meta.json").is_file():
        try:
            meta = SplitStore.open(path).meta
            if meta.get("key") == key and "data_config" in meta:  # older stores record no data config: write again
                log.info("reusing the token store %s", path)
                return path
        except (OSError, ValueError) as e:  # a store is a cache of tokens: write it again
            log.warning("token store %s cannot be read (%s); writing it again", path, e)
    with torch.no_grad():  # each stream's token grid, from one sample
        example = datamodule.adapter.unpack(dataset.__getitems__([0]))
        grids = {s: tuple(ids.shape[1:]) for s, ids in tokenizer.encode(example.x, **example.cond).items()}
    streams = dict(tokenizer.streams)
    shards = shard_folder(path)
    writer = ShardWriter(shards, len(dataset), streams, grids)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[writer], enable_checkpointing=False)
    try:
        trainer.predict(
            EncodeModule(tokenizer, datamodule.adapter),
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
                    "kind": tokenizer.metadata.kind,
                    "split": split,
                    "streams": streams,
                    "grid": {s: list(g) for s, g in grids.items()},
                    "tokenizer": {"class": type(tokenizer).__name__, "checkpoint": str(ckpt.resolve()), "sha256": sha},
                    "normalization": tokenizer.metadata.to_dict(),
                    "data": about,
                    "data_config": data_config,
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
