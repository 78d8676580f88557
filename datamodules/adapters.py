"""Batch adapters: how a data kind's batch becomes the tokenizer's input, condition and loss target, and how the
reconstruction is handed to the metrics that judge it. The *data* config chooses its adapter
(`data.adapter._target_`) and names its metric (`data.adapter.metric`, a `_partial_` torchmetrics class from
SciTok's metrics module), because the data decides its batch format and what an error means; the generic
TokenizerModule takes both from the datamodule. Data code never imports model code: the config builds the metric.

An adapter is stateless; TokenizerModule keeps the metric states (one `metric(groups)` per stage):
    kind                                       the data kind ("fields", "eeg", "images", "galaxy_images")
    unpack(batch) -> ModelInput(x, cond, target, weight)   x and target in the loss space; cond: tokenizer
                                               kwargs; weight: the loss's per-value weights (or None)
    groups(metadata) -> [name]                 metric groups (variables, sampling rates); [] for one group
    group_of(batch) -> [B] or None             each sample's group id (also splits the codebook statistics)
    metric(n_groups) -> metric                 a fresh metric for one stage (data.adapter.metric(groups=...))
    update(metric, recon, batch, group) -> {"input", "recon"}   accumulate; returns the media panel's tensors
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

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
    """metric: builds one stage's metric from `groups=` (data.adapter.metric: a `_partial_` metric class);
    None for an adapter that only unpacks batches (encoding, tests of data code)."""

    kind: str
    group_key: str | None = None  # the batch key that holds each sample's group id
    progress_bar: tuple[str, ...] = ()  # metrics shown in the progress bar

    def __init__(self, metric: Callable[..., Any] | None = None):
        self.metric_factory = metric

    def unpack(self, batch: Batch) -> ModelInput:
        raise NotImplementedError

    def groups(self, metadata: DataMetadata) -> list[str]:
        return []

    def group_of(self, batch: Batch) -> torch.Tensor | None:
        return batch[self.group_key] if self.group_key is not None else None

    def metric(self, n_groups: int):
        if self.metric_factory is None:
            raise ValueError(
                f"{type(self).__name__} has no metric: set data.adapter.metric, a `_partial_` metric class as in "
                f"the data configs of conf/data/ (fields.yaml: FieldErrors), to train or evaluate on this data"
            )
        return self.metric_factory(groups=max(1, n_groups))

    def update(self, metric, recon: torch.Tensor, batch: Batch, group: torch.Tensor | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r})"


class FieldAdapter(BatchAdapter):
    """2-D physical fields (Phaedra's batch dict, datamodules/fields.py): the loss compares with the normalized
    field; metrics are in physical units, per variable."""

    kind, group_key, progress_bar = "fields", "variable_id", ("psnr", "nrmse")

    def unpack(self, batch: Batch) -> ModelInput:
        mean, std = batch["field_variables_in_mean"], batch["field_variables_in_std"]
        target = (batch["field_variables_out"] - mean[..., None, None]) / std[..., None, None]
        return ModelInput(batch["field_variables_in"], {}, target)

    def groups(self, metadata: DataMetadata) -> list[str]:
        return list(metadata.variables) if len(metadata.variables) > 1 else []

    def update(self, metric, recon, batch, group):
        mean, std = batch["field_variables_in_mean"], batch["field_variables_in_std"]
        recon_phys = recon.float() * std[..., None, None] + mean[..., None, None]
        # mean: the physics metrics judge the field as the tokenizer sees it, (x − mean)/std (FieldErrors)
        metric.update(recon_phys, batch["field_variables_out"], std, group, mean=mean)
        return {"input": batch["field_variables_out"], "recon": recon_phys.detach()}


class SignalAdapter(BatchAdapter):
    """1-D patches (EEG, datamodules/eeg.py): {"x": [B, P] normalized, "sfreq": [B] Hz, "rate_id": [B]}; the
    sampling rate is the tokenizer's condition; metrics on the normalized signal, per rate when there are several."""

    kind, group_key, progress_bar = "eeg", "rate_id", ("pearson", "mse")

    def unpack(self, batch: Batch) -> ModelInput:
        return ModelInput(batch["x"], {"sfreq": batch["sfreq"]}, batch["x"])

    def groups(self, metadata: DataMetadata) -> list[str]:
        return [f"{rate:g}hz" for rate in metadata.rates] if len(metadata.rates) > 1 else []

    def update(self, metric, recon, batch, group):
        metric.update(recon.float(), batch["x"], batch["sfreq"], group)
        return {"input": batch["x"], "recon": recon.detach().float()}


class ImageAdapter(BatchAdapter):
    """Images in [0, 1] (datamodules/images.py): {"image": [B, C, H, W]}; PSNR/SSIM with data range 1."""

    kind, progress_bar = "images", ("psnr", "ssim")

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

    kind, progress_bar = "galaxy_images", ("psnr", "nrmse")

    def unpack(self, batch: Batch) -> ModelInput:
        return ModelInput(batch["image"], {}, batch["image"], batch["weight"])

    def update(self, metric, recon, batch, group):
        target = batch["image"]
        recon = recon.float()
        metric.update(recon, target, torch.ones(target.shape[:2], device=target.device), group)
        return {"input": target, "recon": recon.detach()}
