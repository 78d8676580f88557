"""Next-patch prediction on EEG tokens, read from a token store of an EEG tokenizer (`python encode.py ckpt=...`).

    python train.py experiment=eeg_transformer data.store=outputs/eeg/<run>/checkpoints/last-tokens

One sequence per channel of a recording: [BOS] one token per consecutive, non-overlapping patch [EOS], PAD to the
longest. The store's index (recording, channel, rate, start) says which patches follow each other; a channel with a
gap (patches dropped as padding) is cut there, and longer runs into sequences of at most `max_patches`. Splits are the
tokenizer's, by recording.
"""

from __future__ import annotations

import numpy as np
import torch

from datamodules.common import TensorBatches
from datamodules.tokens import StoreSequences
from models.vocab import SPECIAL_TYPE, SPECIALS


def channel_runs(index: np.ndarray, patch_len: int, max_patches: int) -> list[np.ndarray]:
    """Rows of an EEG store's index in sequences: each a run of consecutive patches (start + patch_len = the next
    start) of one recording, channel and rate, in time order, at most `max_patches` long."""
    order = np.lexsort((index["start"], index["rate"], index["channel"], index["recording"]))
    ordered = index[order]
    same = (
        (ordered["recording"][1:] == ordered["recording"][:-1])
        & (ordered["channel"][1:] == ordered["channel"][:-1])
        & (ordered["rate"][1:] == ordered["rate"][:-1])
        & (ordered["start"][1:] == ordered["start"][:-1] + patch_len)
    )
    runs = np.split(order, np.flatnonzero(~same) + 1) if len(order) else []
    return [run[i : i + max_patches] for run in runs for i in range(0, len(run), max_patches)]


class EEGTokenDataModule(StoreSequences):
    """Batches add "patch": int64 [B, L], the row in the split's store of each token's patch (−1 for specials and
    PAD). evaluation_inputs(): the tokenizer, its stream, the rate and the true (normalized) patches of the val/test
    rows, read from the data the store was encoded from, for the transformer module's evaluator (NextPatch: decode
    the predicted next token and compare with the true next patch, with the previous patch and with the tokenizer's
    own reconstruction)."""

    KINDS = {"eeg": "eeg"}
    MODALITY = "eeg"

    def __init__(
        self,
        store: str | None = None,
        max_patches: int = 64,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        seed: int = 0,
        num_workers: int = 0,
    ):
        if max_patches < 1:
            raise ValueError(f"data.max_patches must be ≥ 1, got {max_patches}")
        super().__init__(store, batch_size, eval_batch_size, seed, num_workers)
        self.max_patches = max_patches
        self.rate = 0.0

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        meta = self.open()
        rates = self.tokenizer.metadata.rates
        if len(rates) != 1:
            raise ValueError(
                f"data.store={self.store}: its tokenizer was trained at rates {rates}; next-patch sequences need a "
                "tokenizer of one rate (e.g. experiment=eeg)"
            )
        self.rate = float(rates[0])
        (stream,) = meta["streams"]
        start, eeg_type = self.vocab.range("eeg", stream).start, self.vocab.range("eeg", stream).type_id
        patch_len = int(meta["data"]["patch_len"])
        runs = {split: channel_runs(store.index, patch_len, self.max_patches) for split, store in self.stores.items()}
        L = max(len(r) for split_runs in runs.values() for r in split_runs) + 2  # the longest sequence
        self.max_len = L
        for split, store in self.stores.items():
            ids = torch.from_numpy(np.asarray(store.tokens[stream]).reshape(len(store), -1)[:, 0].astype(np.int64))
            self.splits[split] = self._sequences(runs[split], ids + start, L, eeg_type)

    @staticmethod
    def _sequences(runs: list[np.ndarray], token_ids: torch.Tensor, L: int, eeg_type: int) -> TensorBatches:
        n = len(runs)
        ids = torch.full((n, L), SPECIALS.index("PAD"))
        types = torch.full((n, L), SPECIAL_TYPE)
        patch = torch.full((n, L), -1)
        for i, run in enumerate(runs):
            r = torch.from_numpy(run)
            ids[i, 0], ids[i, 1 : len(r) + 1], ids[i, len(r) + 1] = (
                SPECIALS.index("BOS"),
                token_ids[r],
                SPECIALS.index("EOS"),
            )
            types[i, 1 : len(r) + 1] = eeg_type
            patch[i, 1 : len(r) + 1] = r
        valid = torch.arange(L)[None] < torch.tensor([len(r) + 2 for r in runs])[:, None]
        return TensorBatches(ids=ids, types=types, valid=valid, patch=patch)

    def evaluation_inputs(self) -> dict:
        (stream,) = self.tokenizer.streams
        return {
            "tokenizer": self.tokenizer,
            "vocab": self.vocab,
            "stream": stream,
            "patches": self.truth("x"),
            "rate": self.rate,
        }
