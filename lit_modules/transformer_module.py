"""The LightningModule of the downstream transformer (models/transformer.py): next-token cross-entropy plus the
expected-code reconstruction loss (lit_modules/losses.py ExpectedCodeLoss), on token sequences from a datamodule
that provides `vocab`, `code_vectors` and `max_len` (datamodules/tokens.py). Same optimizer / scheduler / callbacks /
logger / trainer groups and the same train.py as the tokenizers; a module of its own because it learns another way.

    loss = CE(next token in its id range, PAD ignored) + Σ_modalities λ_m · mean over m's streams of ExpectedCodeLoss

λ_m = recon_weight (one number for every modality, or {modality: λ}); a modality's streams are averaged, so the
eleven catalog columns weigh as much as the one image stream.

The network is built in `configure_model`, when the data's vocabulary is known (before a checkpoint is restored);
the vocabulary is saved in every checkpoint (ckpt["vocab"]). Logged: train/loss, train/ce, train/recon/<stream>;
val/loss (the CE), val/{accuracy, ce, perplexity} overall and per modality (each within the target's id range,
as generation with `bounds` predicts), val/recon/<stream>. With `evaluator` (model.evaluator: a
lit_modules/forecast.py class and its options, built with the datamodule's evaluation_inputs()), the data-space
errors of decoded predictions against persistence and the tokenizer's own reconstruction:
<stage>/{forecast, persistence, tokenizer}/<metric>[/<group>], on the first
`data_space_batches` validation batches (generation is the expensive part) and on every test batch.

Batches may carry "positions" (position ids), "context" (aligned context ids per position, where the datamodule
says `context_slots`), "condition" (one id per sequence, where the datamodule says `conditions`), "target" (which
tokens the loss scores, e.g. only the future frame of a field pair) and "inputs" (what the model reads where that
differs from `ids`, the targets: the present frame or MASK where a field pair's future frame is predicted); without
them positions are 0 … L−1, there is no context or condition, every non-PAD token is scored and the inputs are
`ids`. A datamodule whose `causal` is False is read by an encoder (models/transformer.py, causal=False).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from lit_modules.common import STAGES, SciTokModule, describe, evaluator_values, grouped_values, plain
from lit_modules.losses import DecodedFieldLoss, ExpectedCodeLoss, code_matrix
from lit_modules.metrics import TokenErrors
from models import Transformer, TransformerConfig, Vocabulary
from tokenizers.load import allowed_target

# what model.evaluator may name: the evaluators of lit_modules/forecast.py
EVALUATOR_TARGETS = {"lit_modules.forecast": lambda obj: isinstance(obj, type)}


class TransformerModule(SciTokModule):
    def __init__(
        self,
        transformer: dict | DictConfig,
        optimizer: dict | DictConfig,
        scheduler: dict | DictConfig,
        recon_weight: float | dict[str, float] = 0.1,
        recon_positions: int = 256,
        data_space_batches: int | None = 2,
        code_embedding: bool = True,
        compile: bool = False,
        evaluator: dict | DictConfig | None = None,
        decode_weight: float = 0.0,
    ):
        super().__init__()
        transformer, optimizer, scheduler = plain(transformer), plain(optimizer), plain(scheduler)
        recon_weight, evaluator = plain(recon_weight), plain(evaluator)
        self.save_hyperparameters()  # every argument as reassigned above: plain containers only
        self.net: Transformer | None = None
        self.recon: ExpectedCodeLoss | None = None
        self.decoded: DecodedFieldLoss | None = None  # model.decode_weight > 0: the data-space loss (field pairs)
        self.vocab: Vocabulary | None = None
        self.modalities: list[str] = []
        self.metrics = nn.ModuleDict()
        self.evaluator = None  # built from `evaluator` (lit_modules/forecast.py) and the data's evaluation_inputs()
        self.data_metrics = nn.ModuleDict()
        self.flops_per_batch: int | None = None  # ThroughputMonitor reads it; bench/bench_transformer.py measures MFU

    def configure_model(self) -> None:
        if self.net is None:
            self.build(self.trainer.datamodule)

    def build(self, datamodule) -> None:
        """The network, losses, metrics and evaluator for the token data of `datamodule` (its vocabulary, sequence
        length, code vectors and evaluation inputs); Lightning calls it through configure_model, evaluate.py directly
        before loading a checkpoint's weights."""
        if not isinstance(getattr(datamodule, "vocab", None), Vocabulary):
            raise TypeError(
                f"TransformerModule trains on token sequences from a datamodule with a `vocab` "
                f"(datamodules/tokens.py); got {describe(datamodule)}"
            )
        self.vocab = datamodule.vocab
        codes = code_matrix(self.vocab.ranges, datamodule.code_vectors, self.vocab.size)
        # rotary positions (model.transformer.rope): at the datamodule's coordinates of each position id (the field
        # pairs: grid cells), else at the ids themselves
        coords = getattr(datamodule, "position_coords", None) if self.hparams.transformer.get("rope") else None
        # a grid that wraps around (data.periodic): the rotary angles repeat over its size on each axis
        period = getattr(datamodule, "position_period", None) if coords is not None else None
        config = TransformerConfig(
            vocab_size=self.vocab.size,
            n_types=self.vocab.n_types,
            max_len=datamodule.max_len,
            code_dim=codes.shape[1] if self.hparams.code_embedding else 0,
            context=int(getattr(datamodule, "context_slots", 0)),
            causal=bool(getattr(datamodule, "causal", True)),
            conditions=int(getattr(datamodule, "conditions", 0)),
            **({} if coords is None else {"rope_axes": coords.shape[1]}),
            **({} if period is None else {"rope_period": list(period)}),
            **self.hparams.transformer,
        )
        self.net = Transformer(config)
        if config.code_dim:
            self.net.set_codes(codes)
        if coords is not None:
            self.net.set_coords(coords)
        if self.hparams.compile:
            self.net.compile()
        self.recon = ExpectedCodeLoss(self.vocab.ranges, datamodule.code_vectors, self.hparams.recon_positions)
        self.decoded = self.build_decoded_loss(datamodule)
        self.modalities = list(dict.fromkeys(r.modality for r in self.vocab.ranges))
        groups = len(self.modalities) + 1  # + the special tokens (SEP, EOS, MISS)
        self.metrics = nn.ModuleDict({s: TokenErrors(groups=groups) for s in STAGES})
        self.evaluator = self.build_evaluator(datamodule)
        if self.evaluator is not None:
            self.data_metrics = nn.ModuleDict({s: nn.ModuleDict(self.evaluator.metrics()) for s in ("val", "test")})

    def build_evaluator(self, datamodule) -> Any:
        """model.evaluator (a lit_modules.forecast class and its options) called with the datamodule's
        evaluation_inputs(): the tokenizer and the true data of the store's rows. None: no data-space errors."""
        spec = self.hparams.evaluator
        if not spec:
            return None
        if not hasattr(datamodule, "evaluation_inputs"):
            raise TypeError(
                f"model.evaluator={spec.get('_target_')} needs the true data of the tokens; {describe(datamodule)} "
                "has none (no evaluation_inputs): set model.evaluator=null"
            )
        evaluator = allowed_target(spec["_target_"], "model.evaluator", EVALUATOR_TARGETS)
        options = {k: v for k, v in spec.items() if not k.startswith("_")}
        return evaluator(**options, **datamodule.evaluation_inputs())

    def build_decoded_loss(self, datamodule) -> DecodedFieldLoss | None:
        """model.decode_weight > 0: the data-space loss of the predicted frame through the store's tokenizer
        (lit_modules/losses.py DecodedFieldLoss); field pairs only (a datamodule with a token grid and a tokenizer)."""
        weight = self.hparams.get("decode_weight", 0.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise ValueError(f"model.decode_weight must be a number ≥ 0 (0: cross-entropy alone), got {weight!r}")
        if weight == 0:
            return None
        grid, tokenizer = getattr(datamodule, "grid", None), getattr(datamodule, "tokenizer", None)
        if not grid or tokenizer is None:
            raise ValueError(
                f"model.decode_weight={weight} decodes predicted field frames; {describe(datamodule)} has no token "
                "grid and tokenizer (data=field_tokens has): set model.decode_weight=0"
            )
        return DecodedFieldLoss(tokenizer, list(tokenizer.streams), grid)

    def ranges(self) -> list[tuple[str | None, int, int, int]]:
        """(stream name or None for the specials, lo, hi, metric group) of every id range of the vocabulary."""
        out = [(None, 0, self.vocab.ranges[0].start, 0)]
        for r in self.vocab.ranges:
            out.append((f"{r.modality}/{r.stream}", r.start, r.stop, 1 + self.modalities.index(r.modality)))
        return out

    def step(
        self, batch: dict[str, torch.Tensor], stage: str | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
        """(mean CE over non-PAD targets, expected-code loss per stream, the data-space loss of the predicted frame
        or None without model.decode_weight). Each target's logits are restricted to its own id range (README,
        "Downstream transformers"): the LM head is applied to one range at a time, so a position costs d·V_range
        instead of d·V — the full 15k-id head made the galaxy sequences head-bound. With a stage, the epoch's token
        metrics are updated too."""
        ids, types, valid = batch["ids"], batch["types"], batch["valid"]
        given = {k: batch[k][:, :-1] for k in ("positions", "context") if k in batch}
        if "condition" in batch:  # one id per sequence
            given["condition"] = batch["condition"]
        key_valid = None if bool(valid.all()) else valid[:, :-1]  # no padding: SDPA's fused causal kernel
        inputs = batch.get("inputs", ids)  # what the model reads, where it differs from the targets (MASK)
        hidden = self.net.hidden(inputs[:, :-1], types[:, :-1], key_valid, **given).flatten(0, 1)
        targets = ids[:, 1:].flatten()
        keep = (valid & batch.get("target", valid))[:, 1:].flatten()
        weight = self.net.output_weight()
        ce_sum, recon = hidden.new_zeros((), dtype=torch.float32), {}
        # the expected-code loss samples its positions from (step): a resumed run draws what an uninterrupted one did
        generator = torch.Generator().manual_seed(self.global_step)
        frame_logits, frame_targets = {}, {}  # per field stream, for the data-space loss
        for name, lo, hi, group in self.ranges():
            rows = (keep & (targets >= lo) & (targets < hi)).nonzero().flatten()
            if len(rows) == 0:
                continue
            logits = (hidden[rows] @ weight[lo:hi].T).float()  # [n, V_range]
            local = targets[rows] - lo
            log_probs = logits.log_softmax(-1)  # one pass for the CE and the data-space loss's expected codes
            ce_sum = ce_sum + F.nll_loss(log_probs, local, reduction="sum")
            if name is not None and name in self.recon.bounds:
                recon[name] = self.recon.term(name, logits, local, generator)
            if self.decoded is not None and name is not None and name.startswith("field/"):
                stream = name.split("/", 1)[1]
                frame_logits[stream], frame_targets[stream] = log_probs, local
            if stage is not None:
                self.metrics[stage].update(logits.detach(), local, torch.full_like(local, group))
        decoded = self.decoded(frame_logits, frame_targets, log_probs=True) if self.decoded is not None else None
        return ce_sum / keep.sum().clamp_min(1), recon, decoded

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        ce, recon, decoded = self.step(batch)
        per_modality = self.recon_by_modality(recon)
        loss = ce + sum((self.weight_of(m) * v for m, v in per_modality.items()), torch.zeros((), device=ce.device))
        self.loss_terms = {"ce": ce.detach(), **{f"recon/{m}": v.detach() for m, v in per_modality.items()}}
        if decoded is not None:
            loss = loss + self.hparams.decode_weight * decoded
            self.loss_terms["decoded"] = decoded.detach()
            self.log("train/decoded", decoded)
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({"train/ce": ce, **{f"train/recon/{k}": v for k, v in {**recon, **per_modality}.items()}})
        return loss

    def weight_of(self, modality: str) -> float:
        weight = self.hparams.recon_weight
        return float(weight.get(modality, 0.0) if isinstance(weight, dict) else weight)

    @staticmethod
    def recon_by_modality(recon: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"<modality>/<stream>": loss} -> {"<modality>": mean over its streams}."""
        groups: dict[str, list[torch.Tensor]] = {}
        for name, value in recon.items():
            groups.setdefault(name.split("/")[0], []).append(value)
        return {m: torch.stack(v).mean() for m, v in groups.items()}

    def _eval_step(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        ce, recon, decoded = self.step(batch, stage)
        limit = self.hparams.data_space_batches
        if self.evaluator is not None and (stage == "test" or limit is None or batch_idx < limit):
            self.evaluator.update(self.net, batch, self.data_metrics[stage], stage)
        size = len(batch["ids"])
        self.log(f"{stage}/loss", ce, prog_bar=stage == "val", batch_size=size, sync_dist=True)
        if decoded is not None:
            self.log(f"{stage}/decoded", decoded, batch_size=size, sync_dist=True)
        recon = {**recon, **self.recon_by_modality(recon)}
        self.log_dict({f"{stage}/recon/{k}": v for k, v in recon.items()}, batch_size=size, sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, batch_idx, "test")

    def log_epoch(self, stage: str) -> None:
        """Token metrics overall, for the special tokens and per modality; the data-space errors overall and per
        evaluator group (a single group: the overall values alone)."""
        values = grouped_values(self.metrics[stage], ["special", *self.modalities], f"{stage}/")
        self.metrics[stage].reset()
        if stage in self.data_metrics:
            values.update(evaluator_values(self.data_metrics[stage], self.evaluator.groups, f"{stage}/"))
        self.log_dict(values)

    def optimized_parameters(self) -> Iterable[nn.Parameter]:
        return self.net.parameters()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vocab"] = self.vocab.to_dict()
