"""Field pairs in pixel space for a baseline that reads no tokens (experiment=field_fno): the present field and the
field Δ snapshots later, as the data the token store was encoded from hold them, for exactly the pairs, split and
horizon of experiment=field_transformer on the same store.

    python train.py experiment=field_fno data.store=outputs/phaedra/<run>/checkpoints/last-tokens data.delta=1

The store fixes everything a comparison must share: its index gives the pairs (field_tokens.pairs_of, in
FieldTokenDataModule's order: `store_pairs`), its split the held-out trajectories, its `normalization` the statistics
the fields are standardized with, and its recorded data config the files they are read from (StoreSequences.truth,
refused where those files have changed since the export). The tokens themselves and the tokenizer are never read.
"""

from __future__ import annotations

import torch

from datamodules.common import TensorBatches
from datamodules.field_tokens import FieldTokenDataModule, store_pairs
from datamodules.token_store import SPLITS, open_store
from datamodules.tokens import StoreSequences, Truth


class PresentFuture(TensorBatches):
    """Pairs of one split as batches {"x": the normalized present [B, 1, H, W], "y": the normalized future, "src",
    "dst": the rows in the split's store, "variable": the variable id [B]}; `fields[rows]` reads the normalized fields
    (a Truth of the data the store was encoded from), both frames of a batch in one read."""

    def __init__(self, fields: Truth, src: torch.Tensor, dst: torch.Tensor, variable: torch.Tensor):
        super().__init__(src=src, dst=dst, variable=variable)
        self.fields = fields

    def __getitems__(self, idx) -> dict[str, torch.Tensor]:
        t = super().__getitems__(idx)
        x, y = self.fields[torch.cat([t["src"], t["dst"]])].chunk(2)
        return {"x": x, "y": y, **t}


class FieldPairDataModule(StoreSequences):
    """Pairs (field at t, field at t + Δ) of a fields token store's rows (`store`: encode.py's out_dir), in pixel
    space: batches of PresentFuture, train order from (seed, epoch) (EpochShuffleSampler: exact resume).

    After setup: `variables` (the store's variable names, the ids of "variable"), `normalization` (the store's
    DataMetadata) and evaluation_inputs() for the operator module's evaluator (PixelForecast): the true fields of the
    val/test rows in physical units, the statistics and the variable names — FieldTokenDataModule's, less the
    tokenizer."""

    KINDS = FieldTokenDataModule.KINDS

    def __init__(
        self,
        store: str | None = None,
        delta: int = 1,
        batch_size: int = 8,
        eval_batch_size: int = 32,
        seed: int = 0,
        num_workers: int = 0,
    ):
        if delta < 1:
            raise ValueError(f"data.delta must be ≥ 1 snapshot, got {delta}")
        super().__init__(store, batch_size, eval_batch_size, seed, num_workers)
        self.delta = delta
        self.variables: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self.stores = open_store(self.store, self.KINDS)  # the kinds check; no tokenizer is loaded
        self.variables = list(self.normalization.variables)
        fields = self.truth("field_variables_in", SPLITS)  # standardized with the store's statistics
        for split, pairs in store_pairs(self.stores, self.delta, self.seed).items():
            self.splits[split] = PresentFuture(fields[split], **pairs)
        if len(self.splits["train"]) < self.batch_size:
            raise ValueError(
                f"the train split has {len(self.splits['train'])} pairs, fewer than data.batch_size={self.batch_size}"
            )

    def evaluation_inputs(self) -> dict:
        return {
            "truth": {s: Truth(self.splits[s].fields.dataset, "field_variables_out") for s in ("val", "test")},
            "mean": torch.tensor(self.normalization.mean),
            "std": torch.tensor(self.normalization.std),
            "groups": self.variables,
        }
