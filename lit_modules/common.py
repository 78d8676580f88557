"""What the LightningModules share (TokenizerModule, TransformerModule): configs kept as plain hyperparameters, one
optimizer whose scheduler steps per optimizer step, and the evaluation epoch's metrics over all samples and per
group."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.core.saving import load_hparams_from_tags_csv, load_hparams_from_yaml
from lightning.pytorch.utilities.model_helpers import _restricted_classmethod
from omegaconf import OmegaConf

from lit_modules.metrics import CodebookUsage, GroupedSums
from tokenizers.load import check_targets, is_module_class, read_checkpoint

STAGES = ("val", "test")


def is_optimizer_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)


# What the hyper-parameters of a shared checkpoint may name for load_from_checkpoint to build: SciTok's own models,
# losses, optimizer and schedules, and torch's optimizers (tokenizers.load holds the rule and its reason).
MODULE_TARGETS = {
    "tokenizers": is_module_class,
    "models": is_module_class,
    "lit_modules.losses": is_module_class,
    "lit_modules.ademamix": is_optimizer_class,
    "lit_modules.schedulers": callable,
    "lit_modules.forecast": lambda obj: isinstance(obj, type),
    "lit_modules.operator_module": lambda obj: isinstance(obj, type) and obj.__name__ == "PixelForecast",
    "torch.optim": is_optimizer_class,
}


def plain(cfg: Any) -> Any:
    """DictConfig/ListConfig -> resolved dict/list; anything else unchanged."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def describe(obj: Any) -> str:
    return f"{type(obj).__name__} ({type(obj).__module__}.{type(obj).__qualname__})"


def grouped_values(
    metric: GroupedSums | CodebookUsage, groups: Sequence[str], prefix: str, suffix: str = ""
) -> dict[str, torch.Tensor]:
    """The metric's epoch values in float32 as "<prefix><name><suffix>" over all samples, and as
    "<prefix><name><suffix>/<group>" for each of `groups` (one name per metric group) that saw data; with no
    groups, the overall values alone."""
    values = {f"{prefix}{k}{suffix}": v.float() for k, v in metric.compute().items()}
    if groups:
        for group, stats in zip(groups, metric.compute_groups(), strict=True):
            values.update({f"{prefix}{k}{suffix}/{group}": v.float() for k, v in (stats or {}).items()})
    return values


def evaluator_values(metrics: torch.nn.ModuleDict, groups: Sequence[str], prefix: str) -> dict[str, torch.Tensor]:
    """An evaluator's epoch values (its metrics() of one stage, {name: FieldErrors …}) as "<prefix><name>/<metric>"
    and, with more than one group, "<prefix><name>/<metric>/<group>"; metrics that saw no batch are left out. The
    metrics are reset."""
    values = {}
    for name, errors in metrics.items():
        if errors.update_called:
            values.update(grouped_values(errors, groups if len(groups) > 1 else [], f"{prefix}{name}/"))
            errors.reset()
    return values


class SciTokModule(L.LightningModule):
    """The base of SciTok's LightningModules. Their hyperparameters hold `optimizer` and `scheduler`, `_partial_`
    configs called with the parameters / the optimizer; the scheduler steps once per optimizer step. A subclass says
    what the optimizer updates (`optimized_parameters`) and what an evaluation epoch logs at its end (`log_epoch`)."""

    @_restricted_classmethod
    def load_from_checkpoint(
        cls, checkpoint_path: str | Path, map_location: Any = None, hparams_file: str | Path | None = None, **kwargs
    ) -> SciTokModule:
        """Lightning's load_from_checkpoint, once the whole checkpoint (hyper-parameters under every key Lightning
        reads them from, the current and the legacy ones) and `hparams_file` (read by Lightning's own reader for its
        extension) name no `_target_` off MODULE_TARGETS and hold no OmegaConf interpolation: building the module
        instantiates them, and a shared file must not run code. Anything else raises tokenizers.load.
        UnsafeTargetError naming the file and the target, before anything is built. `checkpoint_path` is a local
        file; keyword arguments are the caller's own and are not checked."""
        check_targets(read_checkpoint(checkpoint_path, mmap=True), f"checkpoint {checkpoint_path}", MODULE_TARGETS)
        if hparams_file is not None:
            suffix = Path(hparams_file).suffix.lower()
            read = (
                load_hparams_from_tags_csv if suffix == ".csv" else partial(load_hparams_from_yaml, use_omegaconf=False)
            )
            check_targets(read(hparams_file), f"hparams_file {hparams_file}", MODULE_TARGETS)
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, **kwargs)

    def optimized_parameters(self) -> Iterable[torch.nn.Parameter] | list[dict[str, Any]]:
        """The optimizer's `params`: parameters, or parameter groups (dicts with "params")."""
        raise NotImplementedError

    def log_epoch(self, stage: str) -> None:
        """Log the epoch's metrics of `stage` ("val" or "test") and reset them."""
        raise NotImplementedError

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = instantiate(self.hparams.optimizer)(params=self.optimized_parameters())
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")
