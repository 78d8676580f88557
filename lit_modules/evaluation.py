"""What differs between data kinds for the generic TokenizerModule: how a batch becomes the tokenizer's
input, condition and loss target, and which metrics judge the reconstruction.

An evaluation is chosen in the model config (`model.evaluation._target_`); TokenizerModule keeps one
per stage (val, test). Each one:
    unpack(batch) -> (x, cond, target)        x and target in the loss space; cond: tokenizer kwargs
    set_groups(datamodule)                    per-group metrics (variables, sampling rates) if the data has groups
    group_of(batch) -> [B] or None            each sample's group (also used for codebook statistics)
    update(recon, batch) -> panel             accumulate metrics; returns {"input", "recon"} for media
    compute() -> {name: value}                over the epoch, plus "<name>/<group>" per group; then reset()
"""

from __future__ import annotations

import torch
from torch import nn

from lit_modules.metrics import FieldErrors, GroupedSums, ImageErrors, SignalErrors


class Evaluation(nn.Module):
    """Shared parts: one GroupedSums metric (`metric_cls`), per-group when set_groups found groups; the batch
    key `group_key` holds each sample's group."""

    metric_cls: type[GroupedSums]
    group_key: str
    progress_bar: tuple[str, ...] = ()

    def __init__(self):
        super().__init__()
        self.group_names: list[str] = []
        self.errors = self.metric_cls()

    def _use_groups(self, names: list[str]) -> None:
        if len(names) > 1:
            self.group_names = list(names)
            self.errors = self.metric_cls(groups=len(names))

    def group_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch[self.group_key] if self.group_names else None

    def compute(self) -> dict[str, torch.Tensor]:
        values = dict(self.errors.compute())
        if self.group_names:
            for name, group in zip(self.group_names, self.errors.compute_groups(), strict=True):
                values.update({f"{k}/{name}": v for k, v in (group or {}).items()})
        return values

    def reset(self) -> None:
        self.errors.reset()


class FieldEvaluation(Evaluation):
    """2-D physical fields (Phaedra's batch dict); metrics in physical units, per variable."""

    metric_cls, group_key, progress_bar = FieldErrors, "variable_id", ("psnr", "nrmse")

    @staticmethod
    def unpack(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, torch.Tensor]:
        mean, std = batch["field_variables_in_mean"], batch["field_variables_in_std"]
        target = (batch["field_variables_out"] - mean[..., None, None]) / std[..., None, None]
        return batch["field_variables_in"], {}, target

    def set_groups(self, datamodule) -> None:
        self._use_groups((getattr(datamodule, "normalization", None) or {}).get("variables", []))

    def update(self, recon: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mean, std = batch["field_variables_in_mean"], batch["field_variables_in_std"]
        recon_phys = recon.float() * std[..., None, None] + mean[..., None, None]
        self.errors.update(recon_phys, batch["field_variables_out"], std, self.group_of(batch))
        return {"input": batch["field_variables_out"], "recon": recon_phys.detach()}


class SignalEvaluation(Evaluation):
    """1-D patches (EEG): batch {"x": [B, P] normalized, "sfreq": [B] Hz, "rate_id": [B]}; metrics on the
    normalized signal, per sampling rate when the data has several."""

    metric_cls, group_key, progress_bar = SignalErrors, "rate_id", ("pearson", "mse")

    @staticmethod
    def unpack(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, torch.Tensor]:
        return batch["x"], {"sfreq": batch["sfreq"]}, batch["x"]

    def set_groups(self, datamodule) -> None:
        self._use_groups([f"{rate:g}hz" for rate in getattr(datamodule, "rates", [])])

    def update(self, recon: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.errors.update(recon.float(), batch["x"], batch["sfreq"], self.group_of(batch))
        return {"input": batch["x"], "recon": recon.detach().float()}


class ImageEvaluation(Evaluation):
    """Images in [0, 1]: batch {"image": [B, C, H, W]}; PSNR/SSIM with data range 1."""

    metric_cls, group_key, progress_bar = ImageErrors, "", ("psnr", "ssim")

    @staticmethod
    def unpack(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, torch.Tensor]:
        return batch["image"], {}, batch["image"]

    def set_groups(self, datamodule) -> None:  # one group: all images
        pass

    def update(self, recon: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        recon = recon.float()
        self.errors.update(recon, batch["image"])
        return {"input": batch["image"], "recon": recon.detach().clamp(0, 1)}
