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

from lit_modules.metrics import FieldErrors, SignalErrors


class FieldEvaluation(nn.Module):
    """2-D physical fields (Phaedra's batch dict); metrics in physical units, per variable."""

    progress_bar = ("psnr", "nrmse")

    def __init__(self):
        super().__init__()
        self.group_names: list[str] = []
        self.errors = FieldErrors()

    @staticmethod
    def unpack(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, torch.Tensor]:
        mean, std = batch["field_variables_in_mean"], batch["field_variables_in_std"]
        target = (batch["field_variables_out"] - mean[..., None, None]) / std[..., None, None]
        return batch["field_variables_in"], {}, target

    def set_groups(self, datamodule) -> None:
        variables = (getattr(datamodule, "normalization", None) or {}).get("variables", [])
        if len(variables) > 1:
            self.group_names = list(variables)
            self.errors = FieldErrors(groups=len(variables))

    def group_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch["variable_id"] if self.group_names else None

    def update(self, recon: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mean, std = batch["field_variables_in_mean"], batch["field_variables_in_std"]
        recon_phys = recon.float() * std[..., None, None] + mean[..., None, None]
        self.errors.update(recon_phys, batch["field_variables_out"], std, self.group_of(batch))
        return {"input": batch["field_variables_out"], "recon": recon_phys.detach()}

    def compute(self) -> dict[str, torch.Tensor]:
        return _with_groups(self.errors, self.group_names)

    def reset(self) -> None:
        self.errors.reset()


class SignalEvaluation(nn.Module):
    """1-D patches (EEG): batch {"x": [B, P] normalized, "sfreq": [B] Hz, "rate_id": [B]}; metrics on the
    normalized signal, per sampling rate when the data has several."""

    progress_bar = ("pearson", "mse")

    def __init__(self):
        super().__init__()
        self.group_names: list[str] = []
        self.errors = SignalErrors()

    @staticmethod
    def unpack(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, torch.Tensor]:
        return batch["x"], {"sfreq": batch["sfreq"]}, batch["x"]

    def set_groups(self, datamodule) -> None:
        rates = list(getattr(datamodule, "rates", []))
        if len(rates) > 1:
            self.group_names = [f"{rate:g}hz" for rate in rates]
            self.errors = SignalErrors(groups=len(rates))

    def group_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch["rate_id"] if self.group_names else None

    def update(self, recon: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.errors.update(recon.float(), batch["x"], batch["sfreq"], self.group_of(batch))
        return {"input": batch["x"], "recon": recon.detach().float()}

    def compute(self) -> dict[str, torch.Tensor]:
        return _with_groups(self.errors, self.group_names)

    def reset(self) -> None:
        self.errors.reset()


def _with_groups(metric, group_names: list[str]) -> dict[str, torch.Tensor]:
    """metric.compute() plus "<name>/<group>" from metric.compute_groups() when there are groups."""
    values = dict(metric.compute())
    if group_names:
        for name, group in zip(group_names, metric.compute_groups(), strict=True):
            values.update({f"{k}/{name}": v for k, v in (group or {}).items()})
    return values
