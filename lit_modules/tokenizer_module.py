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

from lit_modules.discriminator import hinge_d_loss, hinge_g_loss
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
    gan: optional adversarial term {discriminator: {_target_: ...}, start_step: int | None, weight: w,
    adaptive_weight: bool}; off while start_step is None. From optimizer step `start_step` on, the
    tokenizer's loss gains w·λ·(−mean D(recon)) and the discriminator learns the hinge loss on
    (target, recon.detach()). λ = 1, or with adaptive_weight (VQGAN) λ = ‖∇ rec‖ / (‖∇ adv‖ + 1e-4)
    (clamped to [0, 1e4], no gradient), both gradients taken at the decoder's last layer: the adversarial
    term then pulls as hard as the reconstruction terms, whatever their scale.

    The discriminator is a second parameter group of the one optimizer, not a second optimizer: its loss
    is added to the tokenizer's and a single backward gives each model exactly its own gradient (D is
    frozen while it scores recon for the tokenizer's term; recon is detached for D's term). That is the
    same update as LlamaGen's alternating steps (both use the batch's pre-update recon and D), while
    trainer.max_steps, val_check_interval, gradient clipping (per model, see configure_gradient_clipping),
    precision plugins and checkpoint resume keep working unchanged — manual optimization would count every
    optimizer's step in global_step and refuse trainer.gradient_clip_val.
    """

    def __init__(self, tokenizer: dict | DictConfig, optimizer: dict | DictConfig, scheduler: dict | DictConfig,
                 evaluation: dict | DictConfig | None = None, loss_weights: dict | DictConfig | None = None,
                 compile: bool = False, gan: dict | DictConfig | None = None):
        super().__init__()
        tokenizer, optimizer, scheduler = plain(tokenizer), plain(optimizer), plain(scheduler)
        evaluation = plain(evaluation) or {"_target_": "lit_modules.evaluation.FieldEvaluation"}
        loss_weights = plain(loss_weights) or {"l1": 1.0, "mse": 1.0}
        unknown = set(loss_weights) - {"l1", "mse"}
        if unknown:
            raise ValueError(f"model.loss_weights: unknown terms {sorted(unknown)}; known: l1, mse")
        if not any(w > 0 for w in loss_weights.values()):
            raise ValueError(f"model.loss_weights: at least one weight must be > 0, got {loss_weights}")
        gan = plain(gan)
        self.save_hyperparameters(dict(tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
                                       evaluation=evaluation, loss_weights=loss_weights, compile=compile, gan=gan))
        self.tokenizer = instantiate(tokenizer)
        self.discriminator, self.gan_start, self.gan_weight, self.gan_adaptive = None, None, 0.0, False
        if gan is not None and gan.get("start_step") is not None:
            unknown = set(gan) - {"discriminator", "start_step", "weight", "adaptive_weight"}
            if unknown or "discriminator" not in gan:
                raise ValueError("model.gan: expected keys discriminator, start_step, weight, adaptive_weight; "
                                 f"got {sorted(gan)}")
            start = gan["start_step"]
            if isinstance(start, bool) or not isinstance(start, int) or start < 0:
                raise ValueError(f"model.gan.start_step must be an integer >= 0 (or null: no GAN), got {start!r}")
            self.discriminator = instantiate(gan["discriminator"])
            self.gan_start, self.gan_weight = int(gan["start_step"]), float(gan.get("weight", 0.5))
            self.gan_adaptive = bool(gan.get("adaptive_weight", False))
            if self.gan_adaptive and not hasattr(getattr(self.tokenizer, "decoder", None), "last_layer"):
                raise ValueError(f"model.gan.adaptive_weight needs a tokenizer whose .decoder has a last_layer; "
                                 f"{type(self.tokenizer).__name__} has none")
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

    @property
    def gan_active(self) -> bool:
        """Whether the adversarial term is on at the current optimizer step."""
        return self.discriminator is not None and self.global_step >= self.gan_start

    def adaptive_weight(self, terms: dict[str, torch.Tensor], adversarial: torch.Tensor) -> torch.Tensor:
        """VQGAN's λ: gradient norm of the reconstruction terms over that of the adversarial term at the last layer."""
        layer = self.tokenizer.decoder.last_layer
        reconstruction = sum(v for k, v in terms.items() if k in self.loss_weights)
        g_rec = torch.autograd.grad(reconstruction, layer, retain_graph=True)[0]
        g_adv = torch.autograd.grad(adversarial, layer, retain_graph=True)[0]
        return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, cond, target = self.evaluation["val"].unpack(batch)  # unpacking is the same for every stage
        out = self.tokenizer(x, **cond)
        terms = self.loss_terms(out.recon, target, out.aux_losses)
        disc_loss = None
        if self.gan_active:
            recon = out.recon.float()
            self.discriminator.requires_grad_(False)  # D scores recon for the tokenizer; D's own grads come below
            adversarial = hinge_g_loss(self.discriminator(recon))
            self.discriminator.requires_grad_(True)
            weight = self.gan_weight
            if self.gan_adaptive:
                lam = self.adaptive_weight(terms, adversarial)
                self.log("train/gan_adaptive_weight", lam)
                weight = weight * lam
            terms["gan"] = weight * adversarial
            logits_real, logits_fake = self.discriminator(target.float()), self.discriminator(recon.detach())
            disc_loss = hinge_d_loss(logits_real, logits_fake)
            self.log_dict({"train/disc/loss": disc_loss, "train/disc/logits_real": logits_real.mean().detach(),
                           "train/disc/logits_fake": logits_fake.mean().detach()})
        loss = torch.stack(list(terms.values())).sum()
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in terms.items()})
        return loss if disc_loss is None else loss + disc_loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        evaluation = self.evaluation[stage]
        x, cond, target = evaluation.unpack(batch)
        out = self.tokenizer(x, **cond)
        loss = torch.stack(list(self.loss_terms(out.recon, target, out.aux_losses).values())).sum()
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=x.shape[0], sync_dist=True)
        if self.gan_active:
            recon = out.recon.float()
            self.log_dict({f"{stage}/disc/logits_real": self.discriminator(target.float()).mean(),
                           f"{stage}/disc/logits_fake": self.discriminator(recon).mean()},
                          batch_size=x.shape[0], sync_dist=True)
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
        params: Any = self.parameters()
        if self.discriminator is not None:  # one optimizer, one parameter group per model (see the class doc)
            params = [{"params": list(self.tokenizer.parameters()), "name": "tokenizer"},
                      {"params": list(self.discriminator.parameters()), "name": "discriminator"}]
        optimizer = instantiate(self.hparams.optimizer)(params=params)
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """With a discriminator the tokenizer's and the discriminator's gradients are clipped separately."""
        if self.discriminator is None or not gradient_clip_val:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        for model in (self.tokenizer, self.discriminator):
            grads = [p for p in model.parameters() if p.grad is not None]
            if not grads:
                continue
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(grads, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(grads, gradient_clip_val)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Normalization statistics travel with the checkpoint (plain lists, for load_tokenizer)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        normalization = getattr(datamodule, "normalization", None)
        if normalization is not None:
            checkpoint["normalization"] = normalization
