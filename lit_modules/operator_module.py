"""The LightningModule of the pixel-space forecasting baseline (experiment=field_fno): a neural operator
(models/operators.py FieldOperator, neuraloperator's FNO) trained on the field pairs of a token store
(datamodules/field_pairs.py), through the same train.py, optimizer, scheduler, callbacks, logger and trainer groups as
the field transformer, and judged as it is.

    loss = MSE(operator(present, variable), future), both standardized per variable with the store's statistics

MSE, not the tokenizers' L1 + MSE: the standardized squared error is what nRMSE measures (nrmse² = its mean ×
10⁴), it weighs the four variables alike, and a forecast from the present is uncertain: the L1 term would pull
towards the median of the futures, MSE towards their mean, the forecast with the least squared error.

Logged: train/loss, val/loss, test/loss (the MSE) and with `evaluator` (PixelForecast, below) the errors in physical
units of the forecast and of persistence, named as the field transformer's: <stage>/{forecast, persistence}/<metric>
and …/<metric>/<variable> (FieldErrors: rel_l1, nrmse, psnr …), on every val and test batch (an operator's forecast
costs one forward pass).

The network is built in `configure_model`, when the data's variables are known; they are saved in every checkpoint
(ckpt["variables"]), so that `OperatorModule.load_from_checkpoint` builds it without the data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from lit_modules.common import MODULE_TARGETS, STAGES, SciTokModule, describe, evaluator_values, plain
from lit_modules.forecast import PairTruth
from lit_modules.metrics import FieldErrors
from tokenizers.load import allowed_target

# what model.operator may name: SciTok's plain operator modules (models/operators.py)
OPERATOR_TARGETS = {"models.operators": MODULE_TARGETS["models"]}


class PixelForecast:
    """The operator's forecast of the future field, de-normalized with the store's statistics, and persistence (the
    present field as the forecast), against the true future field; errors in physical units per variable
    (FieldErrors). The interface of lit_modules.forecast.FieldForecast (the field transformer's evaluator), so that
    train.py logs and evaluate.py judges both alike; there is no tokenizer, hence no "tokenizer" floor and no
    "increment".

    truth: {stage: the true fields of the stage's store rows in physical units, truth[rows] -> [n, 1, H, W]} (the
    same datamodules.tokens.Truth FieldForecast reads); mean, std: [n_vars] the store's statistics; groups: the
    variable names. A batch: "x" the normalized present [B, 1, H, W], "src", "dst" rows of that store, "variable"."""

    def __init__(self, truth: dict, mean: torch.Tensor, std: torch.Tensor, groups: list[str]):
        self.truth, self.mean, self.std, self.groups = truth, mean, std, groups

    def metrics(self, groups: int | None = None) -> dict[str, FieldErrors]:
        """groups: metric groups (default: one per variable; evaluate.py: one per trajectory × variable)."""
        return {name: FieldErrors(groups=groups or len(self.groups)) for name in ("forecast", "persistence")}

    @torch.no_grad()
    def update(
        self,
        net: nn.Module,
        batch: dict[str, torch.Tensor],
        metrics: nn.ModuleDict,
        stage: str,
        group: torch.Tensor | None = None,
        steps: int = 1,
    ) -> None:
        """group: [B] each pair's metric group (default: its variable). steps: apply the operator this many times,
        each to the previous forecast (a rollout of an operator trained Δ ahead, judged on pairs steps·Δ apart)."""
        pair = PairTruth(self.truth[stage], self.mean, self.std, batch, group)
        forecast = batch["x"]
        for _ in range(steps):
            forecast = net(forecast, batch["variable"])
        pair.judge(metrics["forecast"], pair.physical(forecast))
        pair.judge(metrics["persistence"], pair.present)


# what model.evaluator may name
EVALUATOR_TARGETS = {"lit_modules.operator_module": lambda obj: obj is PixelForecast}


class OperatorModule(SciTokModule):
    """operator: {_target_: models.operators.<class>, its options}, built with the data's `n_variables`;
    evaluator: {_target_: lit_modules.operator_module.PixelForecast} or None (val/loss only)."""

    def __init__(
        self,
        operator: dict | DictConfig,
        optimizer: dict | DictConfig,
        scheduler: dict | DictConfig,
        evaluator: dict | DictConfig | None = None,
    ):
        super().__init__()
        operator, optimizer, scheduler = plain(operator), plain(optimizer), plain(scheduler)
        evaluator = plain(evaluator)
        self.save_hyperparameters()  # every argument as reassigned above: plain containers only
        self.net: nn.Module | None = None
        self.variables: list[str] = []
        self.evaluator: PixelForecast | None = None
        self.data_metrics = nn.ModuleDict()

    def configure_model(self) -> None:
        # load_from_checkpoint calls it too, with no trainer (and no data): on_load_checkpoint builds the net then
        if self.net is None and self._trainer is not None:
            self.build(self.trainer.datamodule)

    def build(self, datamodule) -> None:
        """The network and evaluator for the field pairs of `datamodule` (its variables and evaluation inputs);
        Lightning calls it through configure_model, evaluate.py directly before loading a checkpoint's weights."""
        variables = getattr(datamodule, "variables", None)
        if not isinstance(variables, list) or not variables or not hasattr(datamodule, "evaluation_inputs"):
            raise TypeError(
                f"OperatorModule trains on field pairs from a datamodule with `variables` and evaluation_inputs() "
                f"(datamodules/field_pairs.py FieldPairDataModule, data=field_pairs); got {describe(datamodule)}"
            )
        self.build_net(variables)
        spec = self.hparams.evaluator
        if spec:
            evaluator = allowed_target(spec["_target_"], "model.evaluator", EVALUATOR_TARGETS)
            options = {k: v for k, v in spec.items() if not k.startswith("_")}
            self.evaluator = evaluator(**options, **datamodule.evaluation_inputs())
            self.data_metrics = nn.ModuleDict({s: nn.ModuleDict(self.evaluator.metrics()) for s in STAGES})

    def build_net(self, variables: list[str]) -> None:
        spec = self.hparams.operator
        operator = allowed_target(spec["_target_"], "model.operator", OPERATOR_TARGETS)
        options = {k: v for k, v in spec.items() if not k.startswith("_")}
        self.net, self.variables = operator(n_variables=len(variables), **options), list(variables)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = F.mse_loss(self.net(batch["x"], batch["variable"]), batch["y"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        loss = F.mse_loss(self.net(batch["x"], batch["variable"]), batch["y"])
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=len(batch["x"]), sync_dist=True)
        if self.evaluator is not None:
            self.evaluator.update(self.net, batch, self.data_metrics[stage], stage)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def log_epoch(self, stage: str) -> None:
        if stage in self.data_metrics:
            self.log_dict(evaluator_values(self.data_metrics[stage], self.evaluator.groups, f"{stage}/"))

    def optimized_parameters(self) -> Iterable[nn.Parameter]:
        return self.net.parameters()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["variables"] = list(self.variables)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """load_from_checkpoint: build the network for the checkpoint's variables (no data at hand); a resumed run
        (built from its data first) must have the same variables in the same order, or its one-hot channels would
        mean other variables."""
        saved = list(checkpoint["variables"])
        if self.net is None:
            self.build_net(saved)
        elif saved != self.variables:
            raise ValueError(
                f"the checkpoint was trained on variables {saved}; this data has {self.variables}: the operator's "
                "variable channels would mean other variables (use a store of the same data)"
            )
