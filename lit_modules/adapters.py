"""Batch adapters: how a data kind's batch becomes the tokenizer's input, condition and loss target, and which
metrics judge the reconstruction. The *data* config chooses its adapter (`data.adapter._target_`), because the
data decides its batch format; the generic TokenizerModule takes it from the datamodule.

An adapter is stateless; TokenizerModule keeps the metric states (one `metric(groups)` per stage):
    kind                                       the data kind ("fields", "eeg", "images", "galaxy_images")
    unpack(batch) -> ModelInput(x, cond, target, weight)   x and target in the loss space; cond: tokenizer
                                               kwargs; weight: the loss's per-value weights (or None)
    groups(metadata) -> [name]                 metric groups (variables, sampling rates); [] for one group
    group_of(batch) -> [B] or None             each sample's group id (also splits the codebook statistics)
    metric(n_groups) -> GroupedSums            a fresh metric for one stage
    update(metric, recon, batch, group) -> {"input", "recon"}   accumulate; returns the media panel's tensors
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lit_modules.metrics import FieldErrors, GroupedSums, ImageErrors, SignalErrors
from tokenizers.base import DataMetadata

Batch = dict[str, torch.Tensor]


@dataclass
class ModelInput:
    """x: the tokenizer's input; cond: keyword tensors for it; target: what its reconstruction is compared with;
    weight: optional per-value weights of the reconstruction loss (broadcast to the target's shape)."""

    x: torch.Tensor
    cond: dict[str, torch.Tensor]
    target: torch.Tensor
    weight: torch.Tensor | None = None


class BatchAdapter:
    kind: str
    metric_cls: type[GroupedSums]
    group_key: str | None = None  # the batch key that holds each sample's group id
    progress_bar: tuple[str, ...] = ()  # metrics shown in the progress bar

    def unpack(self, batch: Batch) -> ModelInput:
        raise NotImplementedError

    def groups(self, metadata: DataMetadata) -> list[str]:
        return []

    def group_of(self, batch: Batch) -> torch.Tensor | None:
        return batch[self.group_key] if self.group_key is not None else None

    def metric(self, n_groups: int) -> GroupedSums:
        return self.metric_cls(groups=max(1, n_groups))

    def update(
        self, metric: GroupedSums, recon: torch.Tensor, batch: Batch, group: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r})"


class FieldAdapter(BatchAdapter):
    """2-D physical fields (Phaedra's batch dict, datamodules/fields.py): the loss compares with the normalized
    field; metrics are in physical units, per variable."""

    kind, metric_cls, group_key, progress_bar = "fields", FieldErrors, "variable_id", ("psnr", "nrmse")

    def unpack(self, batch: Batch) -> ModelInput:
        mean, std = batch["field_variables_in_mean"], batch["field_variables_in_std"]
        target = (batch["field_variables_out"] - mean[..., None, None]) / std[..., None, None]
        return ModelInput(batch["field_variables_in"], {}, target)

    def groups(self, metadata: DataMetadata) -> list[str]:
        return list(metadata.variables) if len(metadata.variables) > 1 else []

    def update(self, metric, recon, batch, group):
        mean, std = batch["field_variables_in_mean"], batch["field_variables_in_std"]
        recon_phys = recon.float() * std[..., None, None] + mean[..., None, None]
        metric.update(recon_phys, batch["field_variables_out"], std, group)
        return {"input": batch["field_variables_out"], "recon": recon_phys.detach()}


class SignalAdapter(BatchAdapter):
    """1-D patches (EEG, datamodules/eeg.py): {"x": [B, P] normalized, "sfreq": [B] Hz, "rate_id": [B]}; the
    sampling rate is the tokenizer's condition; metrics on the normalized signal, per rate when there are several."""

    kind, metric_cls, group_key, progress_bar = "eeg", SignalErrors, "rate_id", ("pearson", "mse")

    def unpack(self, batch: Batch) -> ModelInput:
        return ModelInput(batch["x"], {"sfreq": batch["sfreq"]}, batch["x"])

    def groups(self, metadata: DataMetadata) -> list[str]:
        return [f"{rate:g}hz" for rate in metadata.rates] if len(metadata.rates) > 1 else []

    def update(self, metric, recon, batch, group):
        metric.update(recon.float(), batch["x"], batch["sfreq"], group)
        return {"input": batch["x"], "recon": recon.detach().float()}


class ImageAdapter(BatchAdapter):
    """Images in [0, 1] (datamodules/images.py): {"image": [B, C, H, W]}; PSNR/SSIM with data range 1."""

    kind, metric_cls, progress_bar = "images", ImageErrors, ("psnr", "ssim")

    def unpack(self, batch: Batch) -> ModelInput:
        return ModelInput(batch["image"], {}, batch["image"])

    def update(self, metric, recon, batch, group):
        recon = recon.float()
        metric.update(recon, batch["image"], group)
        return {"input": batch["image"], "recon": recon.detach().clamp(0, 1)}


class GalaxyImageAdapter(BatchAdapter):
    """Multi-band galaxy cutouts (datamodules/galaxies.py): {"image": [B, bands, S, S] robust-arcsinh normalized,
    "weight": [B, 1, S, S] (1 inside the object's ellipse, less outside), "row": [B]}. The loss is the
    mask-weighted MSE; metrics (FieldErrors with σ = 1: the normalized image is already in units of its robust
    scale) on the normalized image, PSNR/SSIM with each sample's own range (max − min), as for physical fields."""

    kind, metric_cls, progress_bar = "galaxy_images", FieldErrors, ("psnr", "nrmse")

    def unpack(self, batch: Batch) -> ModelInput:
        return ModelInput(batch["image"], {}, batch["image"], batch["weight"])

    def update(self, metric, recon, batch, group):
        target = batch["image"]
        recon = recon.float()
        metric.update(recon, target, torch.ones(target.shape[:2], device=target.device), group)
        return {"input": target, "recon": recon.detach()}
