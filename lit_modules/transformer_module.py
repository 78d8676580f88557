"""The LightningModule of the downstream transformer (models/transformer.py): next-token cross-entropy plus the
expected-code reconstruction loss (lit_modules/losses.py ExpectedCodeLoss), on token sequences from a datamodule
that provides `vocab`, `code_vectors` and `max_len` (datamodules/tokens.py). Same optimizer / scheduler / callbacks /
logger / trainer groups and the same train.py as the tokenizers; a module of its own because it learns another way.

    loss = CE(next token, PAD ignored) + recon_weight · Σ_streams ExpectedCodeLoss

The network is built in `configure_model`, when the data's vocabulary is known (before a checkpoint is restored);
the vocabulary is saved in every checkpoint (ckpt["vocab"]). Logged: train/loss, train/ce, train/recon/<stream>;
val/ce (= val/loss), val/{accuracy, ce, perplexity} overall and per modality, val/recon/<stream>.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from lit_modules.losses import ExpectedCodeLoss
from lit_modules.metrics import TokenErrors
from lit_modules.tokenizer_module import STAGES, describe, plain
from models import Transformer, TransformerConfig, Vocabulary


class TransformerModule(L.LightningModule):
    def __init__(self, transformer: dict | DictConfig, optimizer: dict | DictConfig, scheduler: dict | DictConfig,
                 recon_weight: float = 0.1, recon_positions: int = 256, compile: bool = False):
        super().__init__()
        transformer, optimizer, scheduler = plain(transformer), plain(optimizer), plain(scheduler)
        self.save_hyperparameters(dict(transformer=transformer, optimizer=optimizer, scheduler=scheduler,
                                       recon_weight=recon_weight, recon_positions=recon_positions, compile=compile))
        self.net: Transformer | None = None
        self.recon: ExpectedCodeLoss | None = None
        self.vocab: Vocabulary | None = None
        self.modalities: list[str] = []
        self.metrics = nn.ModuleDict()

    def configure_model(self) -> None:
        if self.net is not None:
            return
        datamodule = self.trainer.datamodule
        if not isinstance(getattr(datamodule, "vocab", None), Vocabulary):
            raise TypeError(f"TransformerModule trains on token sequences from a datamodule with a `vocab` "
                            f"(datamodules/tokens.py); got {describe(datamodule)}")
        self.vocab = datamodule.vocab
        config = TransformerConfig(vocab_size=self.vocab.size, n_types=self.vocab.n_types, max_len=datamodule.max_len,
                                   **self.hparams.transformer)
        self.net = Transformer(config)
        if self.hparams.compile:
            self.net.compile()
        self.recon = ExpectedCodeLoss(self.vocab.ranges, datamodule.code_vectors, self.hparams.recon_positions)
        self.modalities = list(dict.fromkeys(r.modality for r in self.vocab.ranges))
        groups = len(self.modalities) + 1  # + the special tokens (SEP, EOS, MISS)
        self.metrics = nn.ModuleDict({s: TokenErrors(groups=groups) for s in STAGES})

    def _group_of_type(self, types: torch.Tensor) -> torch.Tensor:
        """Type id -> metric group: 0 for specials, then 1 + the modality's index."""
        table = torch.tensor([0, *[1 + self.modalities.index(r.modality) for r in self.vocab.ranges]],
                             device=types.device)
        return table[types]

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                          dict[str, torch.Tensor]]:
        ids, types, valid = batch["ids"], batch["types"], batch["valid"]
        logits = self.net(ids[:, :-1], types[:, :-1], valid[:, :-1])
        targets = ids[:, 1:].masked_fill(~valid[:, 1:], -100)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        recon = self.recon(logits, ids[:, 1:])  # PAD targets lie in no stream's range: no reconstruction term
        return logits, targets, ce, recon

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, _, ce, recon = self.step(batch)
        loss = ce + self.hparams.recon_weight * sum(recon.values(), torch.zeros((), device=ce.device))
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({"train/ce": ce, **{f"train/recon/{k}": v for k, v in recon.items()}})
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        logits, targets, ce, recon = self.step(batch)
        size = len(batch["ids"])
        self.log(f"{stage}/loss", ce, prog_bar=stage == "val", batch_size=size, sync_dist=True)
        self.log_dict({f"{stage}/recon/{k}": v for k, v in recon.items()}, batch_size=size, sync_dist=True)
        keep = targets >= 0
        self.metrics[stage].update(logits[keep], targets[keep], self._group_of_type(batch["types"][:, 1:][keep]))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        metric = self.metrics[stage]
        values = {f"{stage}/{k}": v.float() for k, v in metric.compute().items()}
        for name, stats in zip(["special", *self.modalities], metric.compute_groups(), strict=True):
            values.update({f"{stage}/{k}/{name}": v.float() for k, v in (stats or {}).items()})
        metric.reset()
        self.log_dict(values)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = instantiate(self.hparams.optimizer)(params=self.net.parameters())
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vocab"] = self.vocab.to_dict()
