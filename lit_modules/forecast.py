"""Data-space errors of the transformer's predictions: predicted tokens decoded by the tokenizer and compared with
the true future data, next to two references on the same samples:
    persistence  the present taken as the prediction (the field at t for t + Δ; the previous patch for the next one)
    tokenizer    the tokenizer's own reconstruction of the true future (decode(encode(future))): no prediction can
                 beat it in data space, whatever the transformer learns
and, for fields, a second use of the same prediction:
    increment    present + decode(predicted future tokens) − decode(present tokens): the predicted change added to
                 the present field, so the tokenizer's error (nearly the same on two close frames) cancels

TransformerModule builds one from `model.evaluator` (`{_target_: lit_modules.forecast.FieldForecast, pick: …}`) and
the token datamodule's `evaluation_inputs()` (the tokenizer, layout and the true data of the store's val/test rows:
datamodules/field_tokens.py, eeg_tokens.py); it keeps the metrics (`metrics()`, torchmetrics, synced across processes)
per stage and calls `update(net, batch, metrics, stage)` on evaluation batches. Logged as <stage>/<name>/<metric>
and <stage>/<name>/<metric>/<group> for name in (forecast, persistence, tokenizer), with
FieldErrors' and SignalErrors' definitions (lit_modules/metrics.py).
"""

from __future__ import annotations

import torch
from torch import nn

from lit_modules.losses import expected_codes
from lit_modules.metrics import FieldErrors, SignalErrors
from models.vocab import SPECIALS

NAMES = ("forecast", "persistence", "tokenizer")
PICKS = ("expected_code", "argmax", "soft")


class FieldForecast:
    """The future frame predicted from the present frame, with the layout's types, positions and context and each
    token restricted to its stream's ids — in one pass where the batch has "inputs" (data.future_inputs=present: the
    present frame read by an encoder; masked: MASK read over the future frame), else (tokens) generated greedily
    token by token after [BOS] present [SEP] (KV cache); decoded and de-normalized with the store's statistics;
    errors in physical units per variable (FieldErrors: rel_l1, nrmse, psnr …).

    pick: how a greedy step picks an id (Transformer.generate): "expected_code" (default; the id nearest the expected
    code vector — a field value is a quantity, and the mode of a broad distribution over 1024 amplitude levels is a
    noisy estimate of it) or "argmax"; a model without code vectors always takes the argmax; "soft": no id at
    all, the tokenizer decodes each cell's expected code vector itself (tokenizer.decode_codes; a rollout's earlier
    steps feed the ids nearest them): the distribution's mean in code space, what model.decode_weight trains to decode
    to the future field (lit_modules/losses.py DecodedFieldLoss).
    truth: {stage: the true fields of the stage's store rows in physical units, truth[rows] -> [n, 1, H, W]}
    (datamodules.tokens.Truth reads them from the data files); the batch's "src", "dst" are rows of that store and
    "variable" each pair's variable id; mean, std: [n_vars] (the tokenizer's); groups: the variable names.
    samples: 0 (default) a single forecast of picked ids; K > 0: the mean of K decoded forecasts, each of ids drawn
    from the model's distributions (a rollout: K trajectories, each fed its own draws): a token model's estimate of
    the conditional mean, which the tokens of one greedy pick are not where the future is uncertain (the pick
    takes each token's centre, the decoder makes a sharp but wrong field). Drawn from a generator seeded with `seed`
    at every batch: the same checkpoint and pairs give the same figures.
    present_at: where a batch's inputs (ids without "inputs") hold the present frame; reads: the inputs whose outputs
    predict the future frame (its true ids one position later); generate: no one-pass prediction (tokens)."""

    def __init__(
        self,
        tokenizer: nn.Module,
        vocab,
        layout,
        streams: list[str],
        grid: tuple[int, ...],
        truth: dict,
        mean: torch.Tensor,
        std: torch.Tensor,
        groups: list[str],
        pick: str = "expected_code",
        context_index: torch.Tensor | None = None,
        present_at: slice | None = None,
        reads: slice | None = None,
        generate: bool = False,
        samples: int = 0,
        seed: int = 0,
    ):
        if pick not in PICKS:
            raise ValueError(f"model.evaluator.pick must be one of {PICKS}, got {pick!r}")
        if pick == "soft" and generate:
            raise ValueError(
                "model.evaluator.pick='soft' decodes the distributions of a one-pass forecast; data.future_inputs="
                "tokens generates token by token: use pick=expected_code or argmax"
            )
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
            raise ValueError(f"model.evaluator.samples must be an integer ≥ 0 (0: one pick), got {samples!r}")
        self.samples, self.seed = samples, seed
        self.tokenizer, self.layout, self.streams, self.grid, self.pick = tokenizer, layout, streams, grid, pick
        self.context_index = context_index  # a frame's context slots (datamodules.field_tokens.neighbourhood)
        self.truth, self.mean, self.std, self.groups = truth, mean, std, groups
        self.starts = torch.tensor([vocab.range("field", s).start for s in streams])
        self.bounds = vocab.type_bounds()
        self.frame_len = F = len(streams) * int(torch.tensor(grid).prod())
        # the sequence of data.future_inputs=masked / tokens where the datamodule does not say
        self.present_at = present_at or slice(1, F + 1)
        self.reads = reads or slice(F + 1, 2 * F + 1)
        self.generate = generate
        # each stream's code vectors, which pick="soft" decodes the expectation of
        self.code_vectors = {s: tokenizer.code_vectors(s).detach().float() for s in streams}
        stops = torch.tensor([vocab.range("field", s).stop for s in streams])
        # [frame_len, 2]: the id range of each token of a frame (cells in raster order, streams side by side)
        self.frame_bounds = torch.stack([self.starts, stops], 1).repeat(F // len(streams), 1)

    def metrics(self, groups: int | None = None) -> dict[str, FieldErrors]:
        """groups: metric groups (default: one per variable; evaluate.py: one per trajectory × variable)."""
        return {name: FieldErrors(groups=groups or len(self.groups)) for name in (*NAMES, "increment")}

    def to_tokens(self, frame: torch.Tensor) -> dict[str, torch.Tensor]:
        """Global ids of one frame [B, S·K] (cells, streams side by side) -> {stream: tokenizer ids [B, *grid]}."""
        per_stream = frame.view(len(frame), -1, len(self.streams)) - self.starts.to(frame.device)
        return {s: per_stream[..., k].reshape(len(frame), *self.grid) for k, s in enumerate(self.streams)}

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
        """group: [B] each pair's metric group (default: its variable). steps: predict the future frame this many
        times, each from the previous prediction (an autoregressive rollout of a model trained to forecast Δ
        ahead, judged on pairs steps·Δ apart); the masked-future formulation only."""
        if steps > 1 and (self.generate or self.context_index is None):
            raise ValueError("a rollout needs a one-pass forecast (data.future_inputs=present or masked)")
        device = batch["ids"].device
        tokenizer = self.tokenizer.to(device)
        pair = PairTruth(self.truth[stage], self.mean, self.std, batch, group)

        def physical(frame: torch.Tensor) -> torch.Tensor:
            return pair.physical(tokenizer.decode(self.to_tokens(frame)))

        memo: dict = {}  # the first step's logits, computed once however many forecasts are drawn from them

        def trajectory(generator: torch.Generator | None = None) -> torch.Tensor:
            predicted = None
            for step in range(steps):
                if self.pick == "soft" and generator is None and step == steps - 1:
                    return pair.physical(self.soft_field(net, batch, predicted, memo))
                predicted = self.predict(net, batch, predicted, generator, memo)
            return physical(predicted)

        if not self.samples:
            forecast = trajectory()
        else:  # the mean of K forecasts drawn from the model
            generator = torch.Generator(device).manual_seed(self.seed)
            forecast = sum(trajectory(generator) for _ in range(self.samples)) / self.samples
        self.judge(batch, pair, physical, forecast, metrics)

    def predict(
        self,
        net: nn.Module,
        batch: dict[str, torch.Tensor],
        present: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        memo: dict | None = None,
    ):
        """The future frame's global ids [B, frame] predicted from the batch's present frame, or from `present`
        [B, frame] (a rollout's previous prediction: the inputs and context slots are rebuilt from it): picked
        (`pick`), or drawn from the model's distributions with `generator`. memo: keeps the logits of the batch's
        own present frame for the next call (one pass for several draws)."""
        device, prompt_len = batch["ids"].device, self.frame_len + 2  # BOS, present frame, SEP
        pick = {"soft": "expected_code"}.get(self.pick, self.pick) if net.config.code_dim else "argmax"
        if not self.generate:  # every future token from one pass over the present
            logits = self.remembered_logits(net, batch, present, memo)
            if generator is None:
                return net.pick(logits, pick)
            probs = logits.float().softmax(-1).flatten(0, -2)
            return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])
        # the future frame token by token, each conditioned on those picked before (KV cache)
        out = net.generate(
            batch["ids"][:, :prompt_len],
            self.layout.types.to(device),
            self.frame_len,
            bounds=self.bounds.to(device),
            positions=self.layout.positions.to(device),
            context=batch["context"],
            pick=pick,
            condition=batch.get("condition"),
            **({} if generator is None else {"temperature": 1.0, "generator": generator}),
        )
        return out[:, prompt_len:]

    def remembered_logits(self, net: nn.Module, batch: dict, present: torch.Tensor | None, memo: dict | None):
        """frame_logits, those of the batch's own present frame computed once per memo."""
        if present is None and memo is not None and "logits" in memo:
            return memo["logits"]
        logits = self.frame_logits(net, batch, present)
        if present is None and memo is not None:
            memo["logits"] = logits
        return logits

    def soft_field(self, net: nn.Module, batch: dict, present: torch.Tensor | None, memo: dict | None) -> torch.Tensor:
        """The decoded expected code vectors of the future frame (pick="soft"), normalized units [B, C, H, W]."""
        logits = self.remembered_logits(net, batch, present, memo)
        codes, K = {}, len(self.streams)
        for k, stream in enumerate(self.streams):
            lo, vectors = int(self.starts[k]), self.code_vectors[stream].to(logits.device)
            # [B, cells, V_stream]: the stream's own ids (−inf elsewhere, so its softmax is the whole one's)
            codes[stream] = expected_codes(logits[:, k::K, lo : lo + len(vectors)], vectors, self.grid)
        return self.tokenizer.decode_codes(codes)

    def frame_logits(self, net: nn.Module, batch: dict[str, torch.Tensor], present: torch.Tensor | None):
        """Logits [B, frame, V] of every future token from one pass over the present frame (the batch's, or
        `present`), −inf outside each token's stream."""
        device = batch["ids"].device
        span, end = self.reads, self.reads.stop  # the inputs that predict them; none after them is needed
        inputs, context = batch["inputs"][:, :end], batch["context"][:, :end]
        if present is not None:  # a rollout step: the prediction is the present
            inputs, context = inputs.clone(), context.clone()
            inputs[:, self.present_at] = present
            pad = torch.full((len(present), 1), SPECIALS.index("PAD"), device=device)
            context[:, span] = torch.cat([present, pad], 1)[:, self.context_index.to(device)]
        hidden = net.hidden(
            inputs,
            batch["types"][:, :end],
            positions=batch["positions"][:, :end],
            context=context,
            condition=batch.get("condition"),
        )
        logits = hidden[:, span] @ net.output_weight().T  # the LM head on those positions only
        bounds = self.frame_bounds.to(device)
        vocab = torch.arange(logits.shape[-1], device=device)
        allowed = (vocab >= bounds[:, :1]) & (vocab < bounds[:, 1:])  # [frame_len, V]: each token's stream
        return logits.masked_fill(~allowed, float("-inf"))

    def judge(self, batch: dict[str, torch.Tensor], pair: PairTruth, physical, forecast: torch.Tensor, metrics) -> None:
        """The forecast [B, 1, H, W] (physical units) judged against the true future, beside persistence, the
        tokenizer's floor and the present plus the predicted change; physical: global ids of a frame -> its field."""
        pair.judge(metrics["forecast"], forecast)
        # the present plus the decoded predicted change: the tokenizer's error, mostly shared by two close frames,
        # cancels, and a model that predicts no change gives persistence exactly
        present = batch.get("inputs", batch["ids"])[:, self.present_at]
        pair.judge(metrics["increment"], pair.present + forecast - physical(present))
        pair.judge(metrics["persistence"], pair.present)
        pair.judge(metrics["tokenizer"], physical(batch["ids"][:, self.reads.start + 1 : self.reads.stop + 1]))


class PairTruth:
    """The true present and future fields of a batch of pairs (rows "src", "dst" of `truth`, physical units) and
    the statistics of each pair's variable ("variable"), on the batch's device; `judge` puts a forecast in physical
    units into a FieldErrors with the pair's group (default: its variable). The physics metrics (spectra, local
    variance) read the fields as the tokenizer normalizes them (sigma, mean)."""

    def __init__(self, truth, mean: torch.Tensor, std: torch.Tensor, batch: dict, group: torch.Tensor | None = None):
        device, var = batch["variable"].device, batch["variable"].cpu()
        self.mean, self.std = (v[var].to(device)[:, None, None, None] for v in (mean, std))
        self.present, self.future = truth[batch["src"].cpu()].to(device), truth[batch["dst"].cpu()].to(device)
        self.group = var.to(device) if group is None else group.to(device)

    def physical(self, normalized: torch.Tensor) -> torch.Tensor:
        return normalized.float() * self.std + self.mean

    def judge(self, metric: FieldErrors, forecast: torch.Tensor) -> None:
        metric.update(forecast, self.future, self.std[:, :, 0, 0], self.group, mean=self.mean[:, :, 0, 0])


class NextPatch:
    """Every patch with a previous one in its sequence: the next token given the true past (within the EEG ids; the
    id nearest the expected code where the model has code vectors, else the argmax), decoded; errors on the
    normalized signal (SignalErrors: mse, snr_db, pearson …).

    patches: {stage: the stage's store rows' patches (normalized as the tokenizer saw them), at sampling rate `rate`:
    patches[rows] -> [n, P]} (datamodules.tokens.Truth reads them from the EEG row cache); the batch's "patch" holds
    rows of that store."""

    groups = ("all",)

    def __init__(self, tokenizer: nn.Module, vocab, stream: str, patches: dict, rate: float):
        self.tokenizer, self.stream, self.patches, self.rate = tokenizer, stream, patches, rate
        r = vocab.range("eeg", stream)
        self.lo, self.hi = r.start, r.stop

    def metrics(self) -> dict[str, SignalErrors]:
        return {name: SignalErrors() for name in NAMES}

    @torch.no_grad()
    def update(self, net: nn.Module, batch: dict[str, torch.Tensor], metrics: nn.ModuleDict, stage: str) -> None:
        device = batch["ids"].device
        tokenizer = self.tokenizer.to(device)
        hidden = net.hidden(batch["ids"][:, :-1], batch["types"][:, :-1], batch["valid"][:, :-1])
        nxt, prev = batch["patch"][:, 1:], batch["patch"][:, :-1]
        where = (nxt >= 0) & (prev >= 0)
        if not where.any():
            return
        logits = hidden[where] @ net.output_weight(self.lo, self.hi).T
        truth = batch["ids"][:, 1:][where] - self.lo
        # the id nearest the expected code (as FieldForecast's default pick), else the argmax
        predicted = net.pick(logits, "expected_code", lo=self.lo) if net.config.code_dim else logits.argmax(-1)
        sfreq = torch.full((int(where.sum()),), self.rate, device=device)

        def decoded(ids: torch.Tensor) -> torch.Tensor:
            return tokenizer.decode({self.stream: ids}, sfreq=sfreq).float()

        patches = self.patches[stage]
        target = patches[nxt[where].cpu()].to(device)
        metrics["forecast"].update(decoded(predicted), target, sfreq)
        metrics["persistence"].update(patches[prev[where].cpu()].to(device), target, sfreq)
        metrics["tokenizer"].update(decoded(truth), target, sfreq)
