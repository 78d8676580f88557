"""The one LightningModule that trains every SciTok tokenizer.

Everything tokenizer-specific lives in the tokenizer (an nn.Module built from `tokenizer`, a plain
dict with `_target_`) and in the data's batch dict. Hyperparameters are plain containers only, so
checkpoints load with torch's `weights_only=True`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lit_modules.metrics import CodebookUsage

STAGES = ("val", "test")


def plain(cfg: Any) -> Any:
    """DictConfig/ListConfig -> resolved dict/list; anything else unchanged."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


class TokenizerModule(L.LightningModule):
    """Trains `tokenizer` to reconstruct the normalized field with loss Σ_w w·term + Σ aux_losses.

    evaluation: `_target_` of the data kind's evaluation (lit_modules.evaluation): how a batch becomes
    the tokenizer's input, condition and target, and which metrics are logged.
    loss_weights: {"l1": w, "mse": w} on the target (Phaedra: both 1).
    optimizer / scheduler: `_partial_` configs called with the parameters / the optimizer; the
    scheduler steps once per optimizer step.
    """

    def __init__(self, tokenizer: dict | DictConfig, optimizer: dict | DictConfig, scheduler: dict | DictConfig,
                 evaluation: dict | DictConfig | None = None, loss_weights: dict | DictConfig | None = None,
                 compile: bool = False):
        super().__init__()
        tokenizer, optimizer, scheduler = plain(tokenizer), plain(optimizer), plain(scheduler)
        evaluation = plain(evaluation) or {"_target_": "lit_modules.evaluation.FieldEvaluation"}
        loss_weights = plain(loss_weights) or {"l1": 1.0, "mse": 1.0}
        unknown = set(loss_weights) - {"l1", "mse"}
        if unknown:
            raise ValueError(f"model.loss_weights: unknown terms {sorted(unknown)}; known: l1, mse")
        if not any(w > 0 for w in loss_weights.values()):
            raise ValueError(f"model.loss_weights: at least one weight must be > 0, got {loss_weights}")
        self.save_hyperparameters(dict(tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
                                       evaluation=evaluation, loss_weights=loss_weights, compile=compile))
        self.tokenizer = instantiate(tokenizer)
        self.loss_weights = loss_weights
        self.evaluation = nn.ModuleDict({s: instantiate(evaluation) for s in STAGES})
        self.usage = nn.ModuleDict({
            s: nn.ModuleDict({name: CodebookUsage(size) for name, size in self.tokenizer.streams.items()})
            for s in STAGES
        })
        self.codebook_counts: dict[str, torch.Tensor] = {}
        if compile:
            self.tokenizer.compile()

    def setup(self, stage: str) -> None:
        """Per-group metrics (variables, sampling rates) when the datamodule has groups."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        for stage, evaluation in self.evaluation.items():
            evaluation.set_groups(datamodule)
            if evaluation.group_names:
                groups = len(evaluation.group_names)
                self.usage[stage] = nn.ModuleDict({name: CodebookUsage(size, groups)
                                                   for name, size in self.tokenizer.streams.items()})

    # ---- one batch -------------------------------------------------------------------------------

    def loss_terms(self, recon: torch.Tensor, target: torch.Tensor,
                   aux: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        recon = recon.float()
        terms = {"l1": F.l1_loss(recon, target), "mse": F.mse_loss(recon, target)}
        terms = {k: self.loss_weights[k] * v for k, v in terms.items() if self.loss_weights.get(k, 0) > 0}
        terms.update(aux)
        return terms

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, cond, target = self.evaluation["val"].unpack(batch)  # unpacking is the same for every stage
        out = self.tokenizer(x, **cond)
        terms = self.loss_terms(out.recon, target, out.aux_losses)
        loss = torch.stack(list(terms.values())).sum()
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in terms.items()})
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        evaluation = self.evaluation[stage]
        x, cond, target = evaluation.unpack(batch)
        out = self.tokenizer(x, **cond)
        loss = torch.stack(list(self.loss_terms(out.recon, target, out.aux_losses).values())).sum()
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=x.shape[0], sync_dist=True)
        group = evaluation.group_of(batch)
        for name, ids in out.tokens.items():
            self.usage[stage][name].update(ids, group)
        return evaluation.update(out.recon, batch)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        evaluation = self.evaluation[stage]
        values = {f"{stage}/{k}": v.float() for k, v in evaluation.compute().items()}
        evaluation.reset()
        for name, metric in self.usage[stage].items():
            values.update({f"{stage}/{k}/{name}": v.float() for k, v in metric.compute().items()})
            per_group = metric.compute_groups() if evaluation.group_names else []
            for group, stats in zip(evaluation.group_names, per_group, strict=False):
                values.update({f"{stage}/{k}/{name}/{group}": v.float() for k, v in (stats or {}).items()})
            self.codebook_counts[name] = metric.counts.sum(0).detach().cpu()
            metric.reset()
        shown = {f"{stage}/{k}" for k in evaluation.progress_bar}
        for key, value in values.items():
            self.log(key, value, prog_bar=key in shown)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # ---- optimization and checkpoints -----------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Normalization statistics travel with the checkpoint (plain lists, for load_tokenizer)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        normalization = getattr(datamodule, "normalization", None)
        if normalization is not None:
            checkpoint["normalization"] = normalization
