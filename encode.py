"""Encode a galaxy data set into token stores, one per split: `python encode.py image_ckpt=<astro_image ckpt>`.

For the data config's galaxies (default: the embedded set), this
1. fits the catalog-scalar tokenizer (quantile bins) and the spectrum tokenizer (K-means) on the train split, or
   reuses them: they are saved in out_dir as checkpoints named after the data fingerprint, loadable with
   `tokenizers.load_tokenizer` like any other;
2. encodes every requested split with those and the trained image tokenizer into
   `<out_dir>/<split>-<key>.npz` (datamodules/token_store.py), the key made from the sha256 of each tokenizer
   checkpoint and the data's fingerprint: a second run with the same tokenizers and data reuses the stores.
Stores and tokenizers are written atomically. Runs on the GPU when there is one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from datamodules.galaxies import GalaxyDataModule
from datamodules.sources import atomic_torch_save
from datamodules.token_store import TokenStore, arrays_fingerprint, file_sha256
from tokenizers import load_tokenizer
from tokenizers.astro import GalaxyImageTokenizer, ScalarQuantileTokenizer, SpectrumTokenizer
from tokenizers.base import DataMetadata

log = logging.getLogger("scitok.encode")


def save_tokenizer(tokenizer: torch.nn.Module, spec: dict, metadata: DataMetadata, path: Path) -> Path:
    """A checkpoint in TokenizerModule's layout (hyper_parameters.tokenizer, state_dict 'tokenizer.*', data), so
    load_tokenizer reads it; written under a temporary name and renamed."""
    ckpt = {
        "hyper_parameters": {"tokenizer": spec},
        "state_dict": {f"tokenizer.{k}": v for k, v in tokenizer.state_dict().items()},
        "data": metadata.to_dict(),
    }
    atomic_torch_save(ckpt, path)
    return path


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


def encode(cfg: DictConfig) -> dict[str, Path]:
    """Write (or find) the token store of every split in cfg.splits; returns split -> store path."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    image_ckpt = Path(cfg.image_ckpt)
    if not image_ckpt.is_file():
        raise FileNotFoundError(
            f"image_ckpt={image_ckpt} does not exist (train one: python train.py experiment=astro_image)"
        )
    image_tokenizer = load_tokenizer(image_ckpt)
    if not isinstance(image_tokenizer, GalaxyImageTokenizer):
        raise ValueError(
            f"image_ckpt={image_ckpt} holds a {type(image_tokenizer).__name__}; expected a "
            f"GalaxyImageTokenizer (a checkpoint of experiment=astro_image)"
        )
    if not image_tokenizer.fitted:
        raise ValueError(
            f"image_ckpt={image_ckpt}: its GalaxyImageTokenizer has no fitted codebook (a checkpoint "
            f"from before stage 2); use the run's checkpoints/last.ckpt"
        )
    data: GalaxyDataModule = instantiate(cfg.data)
    data.prepare_data()
    data.setup("fit")
    table = data.table
    unknown = sorted(set(cfg.splits) - set(data.rows))
    if unknown:
        raise ValueError(f"splits: unknown {unknown}; choose from {sorted(data.rows)}")
    out_dir = Path(cfg.out_dir)
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
    (out_dir / "latest.json").write_text(json.dumps({k: str(v) for k, v in stores.items()}, indent=2))
    return stores


@hydra.main(version_base="1.3", config_path="conf", config_name="encode")
def main(cfg: DictConfig) -> None:
    for split, path in encode(cfg).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
