"""The one LightningModule that trains every SciTok tokenizer that learns by reconstruction.

What is specific lives elsewhere: the tokenizer (an nn.Module following tokenizers.base.Tokenizer, built from
`tokenizer`), its loss (an nn.Module built from `loss`, lit_modules/losses.py) and the data's batch adapter
(datamodules/adapters.py, chosen by the data config and taken from the datamodule). Hyperparameters are plain
containers only, so checkpoints load with torch's `weights_only=True`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.utils import flop_counter as flop_counter_formulas
from torch.utils.flop_counter import FlopCounterMode

from datamodules.adapters import BatchAdapter, ModelInput
from lit_modules.common import STAGES, SciTokModule, describe, grouped_values, plain
from lit_modules.losses import LossOutput
from lit_modules.metrics import CodebookUsage
from tokenizers.base import DataMetadata, HasLastLayer, TokenizerOutput, check_tokenizer
from tokenizers.load import put_metadata
from tokenizers.released import initial_weights


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, also counting the CPU flash-attention kernels it has no formula for (SDPA takes
    them for contiguous q/k/v, e.g. from channels_last activations), with the formulas of the GPU kernels."""
    aten = torch.ops.aten
    return FlopCounterMode(
        display=False,
        custom_mapping={  # called with the shapes of the arguments
            aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, **__: (
                flop_counter_formulas.sdpa_flop_count(q, k, v)
            ),
            aten._scaled_dot_product_flash_attention_for_cpu_backward: lambda grad, q, k, v, *_, **__: (
                flop_counter_formulas.sdpa_backward_flop_count(grad, q, k, v)
            ),
        },
    )


class TokenizerModule(SciTokModule):
    """Trains `tokenizer` to reconstruct the adapter's target with `loss` (default: L1 + MSE).

    optimizer / scheduler: `_partial_` configs called with the parameters / the optimizer; the scheduler steps
    once per optimizer step.

    init_from: a file the tokenizer starts from (fine-tuning), loaded at setup of fit: released weights
    (tokenizers/released.py, the kind follows from the tokenizer) or a SciTok checkpoint. The checkpoints'
    metadata.source names it, its sha256 and the input convention its weights were trained with.

    With a discriminator in the loss (loss.gan), it is a second parameter group of the one optimizer, not a
    second optimizer: its hinge loss is added to the tokenizer's and a single backward gives each model exactly
    its own gradient (lit_modules/losses.py). That is the same update as LlamaGen's alternating steps (both use
    the batch's pre-update recon and D), while trainer.max_steps, val_check_interval, gradient clipping (per
    model, see configure_gradient_clipping), precision plugins and checkpoint resume keep working unchanged —
    manual optimization would count every optimizer's step in global_step and refuse trainer.gradient_clip_val.

    At setup the module checks the datamodule's batches against the tokenizer (one sample through it), so a
    model/data pair that cannot work together fails before training with a message naming both.
    """

    def __init__(
        self,
        tokenizer: dict | DictConfig,
        optimizer: dict | DictConfig,
        scheduler: dict | DictConfig,
        loss: dict | DictConfig | None = None,
        compile: bool = False,
        channels_last: bool = False,
        init_from: str | None = None,
    ):
        super().__init__()
        tokenizer, optimizer, scheduler = plain(tokenizer), plain(optimizer), plain(scheduler)
        loss = plain(loss) or {"_target_": "lit_modules.losses.ReconstructionLoss"}
        self.save_hyperparameters()  # every argument as reassigned above: plain containers only
        self.tokenizer = instantiate(tokenizer)
        check_tokenizer(self.tokenizer)
        self.loss = instantiate(loss, _recursive_=False)  # the loss builds its discriminator only when it is on
        if self.loss.needs_last_layer and not isinstance(self.tokenizer, HasLastLayer):
            raise ValueError(
                f"model.loss.gan.adaptive_weight needs a tokenizer with a `last_layer`; "
                f"{describe(self.tokenizer)} has none"
            )
        self.adapter: BatchAdapter | None = None
        self.metadata: DataMetadata | None = None
        self.metrics = nn.ModuleDict()
        self.usage = nn.ModuleDict()
        self.groups: list[str] = []
        self.codebook_counts: dict[str, torch.Tensor] = {}  # the last evaluation's histogram per stream (MediaLogger)
        # model FLOPs of one training batch (forward + backward, counted at setup): ThroughputMonitor logs
        # train/device/flops_per_sec from it (and MFU on GPUs whose peak Lightning knows)
        self.flops_per_batch: int | None = None
        self.init_source: str | None = None  # DataMetadata.source of a run started from init_from, once loaded
        # NHWC weights and image batches: convolutions run without layout reorders (GPU tensor cores want it)
        self.channels_last = channels_last
        if channels_last:
            self.tokenizer.to(memory_format=torch.channels_last)
        if compile:
            self.tokenizer.compile()

    # ---- the data ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Take the adapter and metadata from the datamodule, check the pair, build the metrics (once per
        datamodule: fit and the test after it share them)."""
        datamodule = self.trainer.datamodule
        if self.adapter is not None and self.adapter is getattr(datamodule, "adapter", None):
            return  # set up for this datamodule already (fit, then test)
        if not isinstance(getattr(datamodule, "adapter", None), BatchAdapter):
            raise TypeError(
                f"TokenizerModule trains from a datamodule with a batch `adapter` "
                f"(datamodules/adapters.py); got {describe(datamodule)}"
            )
        self.adapter, self.metadata = datamodule.adapter, datamodule.metadata
        if self.hparams.init_from is not None and stage == "fit" and self.init_source is None:
            # fine-tuning starts here, not in __init__: load_from_checkpoint of a fine-tuned checkpoint does not need
            # the file (a resumed run loads it, then its checkpoint overwrites these weights)
            weights, self.init_source = initial_weights(self.tokenizer, self.hparams.init_from)
            self.tokenizer.load_state_dict(weights)
        if self.init_source is not None:  # the checkpoints say which weights it started from, and their inputs
            self.metadata = dataclasses.replace(self.metadata, source=self.init_source)
        example = self.check_data(datamodule)
        self.example_input_array = {"x": example.x, **example.cond}  # the model summary's FLOPs and shapes
        batch_size = getattr(datamodule, "batch_size", None)
        if stage == "fit" and batch_size:
            self.flops_per_batch = self.training_flops(example) * batch_size
        self.groups = self.adapter.groups(self.metadata)
        n = max(1, len(self.groups))
        self.metrics = nn.ModuleDict({s: self.adapter.metric(len(self.groups)) for s in STAGES})
        self.usage = nn.ModuleDict(
            {
                s: nn.ModuleDict({name: CodebookUsage(size, n) for name, size in self.tokenizer.streams.items()})
                for s in STAGES
            }
        )

    @torch.no_grad()
    def check_data(self, datamodule: L.LightningDataModule) -> ModelInput:
        """One validation sample through the tokenizer (eval mode): fail now, naming model and data, if the
        batch cannot be unpacked, the tokenizer refuses it, or the reconstruction does not match the target.
        Returns the checked sample (setup's example input)."""
        was_training = self.tokenizer.training
        self.tokenizer.eval()
        try:
            example = self.adapter.unpack(datamodule.example_batch(1))
            out = self.tokenizer.forward(example.x, **example.cond)  # not __call__: no compile, no hooks
            if out.recon.shape != example.target.shape:
                raise ValueError(f"reconstruction {tuple(out.recon.shape)} != target {tuple(example.target.shape)}")
            return example
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise ValueError(
                f"model {describe(self.tokenizer)} cannot train on data {describe(datamodule)} "
                f"with batch adapter {self.adapter!r}: {e}"
            ) from e
        finally:
            self.tokenizer.train(was_training)

    def training_flops(self, example: ModelInput) -> int:
        """Model FLOPs (torch's FlopCounterMode: matmuls, convolutions, attention) of forward + loss + backward for
        one sample, counted on a copy, with the RNG state restored: training itself is left exactly as it was."""
        tokenizer, loss = copy.deepcopy(self.tokenizer).train(), copy.deepcopy(self.loss)
        devices = [example.x.device] if example.x.is_cuda else []
        with torch.random.fork_rng(devices=devices), flop_counter() as counter:
            out = tokenizer(self.model_input(example.x), **example.cond)
            last_layer = tokenizer.last_layer if loss.needs_last_layer else None
            losses = loss(
                out.recon,
                example.target,
                out.aux_losses,
                step=0,
                train=True,
                last_layer=last_layer,
                weight=example.weight,
            )
            losses.loss.backward()
        return int(counter.get_total_flops())

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """x in the tokenizer's memory format: NHWC for image batches when model.channels_last is set."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def forward(self, x: torch.Tensor, **cond: torch.Tensor) -> TokenizerOutput:
        """The tokenizer (the model summary calls this with example_input_array)."""
        return self.tokenizer(x, **cond)

    # ---- one batch ------------------------------------------------------------------------------
    def compute_loss(
        self, batch: dict[str, torch.Tensor], train: bool
    ) -> tuple[ModelInput, TokenizerOutput, LossOutput]:
        example = self.adapter.unpack(batch)
        out = self.tokenizer(self.model_input(example.x), **example.cond)
        last_layer = self.tokenizer.last_layer if self.loss.needs_last_layer else None
        losses = self.loss(
            out.recon,
            example.target,
            out.aux_losses,
            step=self.global_step,
            train=train,
            last_layer=last_layer,
            weight=example.weight,
        )
        return example, out, losses

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, _, losses = self.compute_loss(batch, train=True)
        self.loss_terms = {"loss": losses.loss.detach(), **{k: v.detach() for k, v in losses.terms.items()}}
        self.log("train/loss", losses.tokenizer_loss, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in {**losses.terms, **losses.extras}.items()})
        return losses.loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        example, out, losses = self.compute_loss(batch, train=False)
        size = example.x.shape[0]
        self.log(f"{stage}/loss", losses.tokenizer_loss, prog_bar=stage == "val", batch_size=size, sync_dist=True)
        self.log_dict({f"{stage}/{k}": v for k, v in losses.extras.items()}, batch_size=size, sync_dist=True)
        group = self.adapter.group_of(batch) if self.groups else None
        for name, ids in out.tokens.items():
            self.usage[stage][name].update(ids, group)
        return self.adapter.update(self.metrics[stage], out.recon, batch, group)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def log_epoch(self, stage: str) -> None:
        """The reconstruction metrics and each stream's codebook statistics, overall and per group."""
        values = grouped_values(self.metrics[stage], self.groups, f"{stage}/")
        self.metrics[stage].reset()
        self.codebook_counts = {}
        for name, metric in self.usage[stage].items():
            stats = grouped_values(metric, self.groups, f"{stage}/", f"/{name}")
            if stats[f"{stage}/usage/{name}"] > 0:  # a stream without tokens this epoch (astro codebook before stage 2)
                values.update(stats)
                self.codebook_counts[name] = metric.counts.sum(0).detach().cpu()
            metric.reset()
        shown = {f"{stage}/{k}" for k in self.adapter.progress_bar}
        for key, value in values.items():
            self.log(key, value, prog_bar=key in shown)

    # ---- optimization and checkpoints -----------------------------------------------------------
    def optimized_parameters(self) -> Iterable[nn.Parameter] | list[dict[str, Any]]:
        if self.loss.discriminator is None:
            return self.tokenizer.parameters()
        return [  # one optimizer, one parameter group per model (see the class doc)
            {"params": list(self.tokenizer.parameters()), "name": "tokenizer"},
            {"params": list(self.loss.discriminator.parameters()), "name": "discriminator"},
        ]

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """With a discriminator the tokenizer's and the discriminator's gradients are clipped separately."""
        if self.loss.discriminator is None or not gradient_clip_val:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        for model in (self.tokenizer, self.loss.discriminator):
            grads = [p for p in model.parameters() if p.grad is not None]
            if not grads:
                continue
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(grads, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(grads, gradient_clip_val)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint of a fine-tuning run keeps saying where it started (resume, test of a checkpoint)."""
        source = (checkpoint.get("data") or {}).get("source")
        if source:
            self.init_source = source
            if self.metadata is not None:
                self.metadata = dataclasses.replace(self.metadata, source=source)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The data's metadata (DataMetadata as a plain dict) travels with the checkpoint, for load_tokenizer."""
        put_metadata(checkpoint, self.metadata)
