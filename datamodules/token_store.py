"""Token stores: one file per dataset split with every object's id and its tokens per modality, written by
`encode.py` and read by the downstream transformer.

A store is an .npz file:
    object_id        int64 [N]
    tokens/<stream>  int64 [N, T_stream]  (image: the (S/4)² codebook ids in raster order; catalog: one column per
                     catalog column, MISS = the last id; spectrum: one id per patch of pixels)
    present/<stream> bool [N]             whether the object has that modality (a spectrum with a valid pixel, a
                                          catalog row with a value); the tokens of a missing one carry nothing
    meta             JSON: split, vocabulary size per stream, catalog column names, the sha256 of each tokenizer
                     checkpoint, the data fingerprint
Its name ends in a key made from the tokenizers' hashes, the data fingerprint and the split, so asking for the same
tokens again finds the store; it is written under a temporary name and renamed, so an interrupted export leaves no
file that is ever read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenizers.load import UNREADABLE


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


@dataclass
class TokenStore:
    object_id: np.ndarray
    tokens: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    meta: dict

    @staticmethod
    def key(split: str, tokenizer_hashes: dict[str, str], data_fingerprint: str) -> str:
        text = json.dumps({"split": split, "tokenizers": tokenizer_hashes, "data": data_fingerprint}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @staticmethod
    def path(out_dir: str | Path, split: str, key: str) -> Path:
        return Path(out_dir) / f"{split}-{key}.npz"

    def save(self, path: str | Path) -> Path:
        """Write atomically: a temporary file in the same folder, renamed when complete."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        arrays = {"object_id": self.object_id, "meta": np.array(json.dumps(self.meta))}
        arrays.update({f"tokens/{k}": v for k, v in self.tokens.items()})
        arrays.update({f"present/{k}": v for k, v in self.present.items()})
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TokenStore:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"token store {path} does not exist (python encode.py writes it)")
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {n: f[n] for n in f.files}
        except UNREADABLE as e:
            raise ValueError(
                f"token store {path} cannot be read ({type(e).__name__}: {e}): it is truncated or "
                f"corrupt; write it again (python encode.py)"
            ) from e
        if "object_id" not in arrays or "meta" not in arrays:
            raise ValueError(f"{path} is not a SciTok token store (no object_id/meta)")
        tokens = {n.split("/", 1)[1]: v for n, v in arrays.items() if n.startswith("tokens/")}
        present = {n.split("/", 1)[1]: v for n, v in arrays.items() if n.startswith("present/")}
        return cls(arrays["object_id"], tokens, present, json.loads(str(arrays["meta"])))
