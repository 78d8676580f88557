"""What a tokenizer minimises, kept out of the LightningModule (the layout of LlamaGen's vq_loss.py).

ReconstructionLoss(l1, mse, gan), on a reconstruction x̂ of the target x (both in the loss space the data's
adapter chose, e.g. the normalized field):
    tokenizer     = l1·mean|x̂ − x| + mse·mean(x̂ − x)² + Σ the tokenizer's aux losses (codebook, commitment …)
                    + gan.weight·λ·(−mean D(x̂))                       from optimizer step gan.start_step on
    discriminator = 0.5·(mean relu(1 − D(x)) + mean relu(1 + D(sg x̂)))   (hinge), from the same step on
λ = 1, or with gan.adaptive_weight VQGAN's λ = ‖∇ rec‖ / (‖∇ adv‖ + 1e-4) (clamped to [0, 1e4], no gradient),
both gradients taken at the tokenizer's `last_layer`: the adversarial term then pulls as hard as the
reconstruction terms, whatever their scale.

The discriminator is trained by the same backward as the tokenizer: D is frozen while it scores x̂ for the
tokenizer's term and x̂ is detached for D's own term, so the summed loss gives each model exactly its own
gradient (see TokenizerModule for why one optimizer with two parameter groups, not two optimizers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

GAN_KEYS = {"discriminator", "start_step", "weight", "adaptive_weight"}


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


@dataclass
class LossOutput:
    """terms: the tokenizer's weighted terms; tokenizer_loss: their sum; loss: what backward() takes (the tokenizer's
    loss, plus the discriminator's hinge loss while it trains); extras: further scalars to log (disc/…)."""

    terms: dict[str, torch.Tensor]
    tokenizer_loss: torch.Tensor
    loss: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        terms: dict[str, torch.Tensor],
        extras: dict[str, torch.Tensor] | None = None,
        disc_loss: torch.Tensor | None = None,
    ) -> LossOutput:
        total = torch.stack(list(terms.values())).sum()
        return cls(terms, total, total if disc_loss is None else total + disc_loss, extras or {})


class ReconstructionLoss(nn.Module):
    """See the module docstring. gan: None, or {discriminator: {_target_: …}, start_step: int | None,
    weight: float, adaptive_weight: bool}; no discriminator is built while start_step is None."""

    def __init__(self, l1: float = 1.0, mse: float = 1.0, gan: dict | Any | None = None):
        super().__init__()
        if min(l1, mse) < 0 or max(l1, mse) <= 0:
            raise ValueError(f"model.loss: weights l1={l1}, mse={mse} must be >= 0 with at least one > 0")
        self.weights = {"l1": float(l1), "mse": float(mse)}
        gan = OmegaConf.to_container(gan, resolve=True) if OmegaConf.is_config(gan) else gan
        self.discriminator: nn.Module | None = None
        self.gan_start, self.gan_weight, self.adaptive = 0, 0.0, False
        if gan is None or gan.get("start_step") is None:
            return
        if set(gan) - GAN_KEYS or "discriminator" not in gan:
            raise ValueError(f"model.loss.gan: expected keys {', '.join(sorted(GAN_KEYS))}; got {sorted(gan)}")
        start = gan["start_step"]
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"model.loss.gan.start_step must be an integer >= 0 (or null: no GAN), got {start!r}")
        self.discriminator = instantiate(gan["discriminator"])
        self.gan_start, self.gan_weight = start, float(gan.get("weight", 0.5))
        self.adaptive = bool(gan.get("adaptive_weight", False))

    @property
    def needs_last_layer(self) -> bool:
        return self.discriminator is not None and self.adaptive

    def gan_active(self, step: int) -> bool:
        """Whether the adversarial terms are on at optimizer step `step`."""
        return self.discriminator is not None and step >= self.gan_start

    def reconstruction_terms(
        self, recon: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Means over every value; with a per-value `weight` (broadcast to the target's shape, e.g. an object mask
        [B, 1, H, W]) weighted means Σ w·err / Σ w."""
        err = recon.float() - target
        if weight is None:
            terms = {"l1": lambda: err.abs().mean(), "mse": lambda: err.pow(2).mean()}
        else:
            w = weight.float().expand_as(err)
            total = w.sum().clamp_min(1e-12)
            terms = {"l1": lambda: (w * err.abs()).sum() / total, "mse": lambda: (w * err.pow(2)).sum() / total}
        return {k: w * terms[k]() for k, w in self.weights.items() if w > 0}

    def adaptive_weight(
        self, reconstruction: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor
    ) -> torch.Tensor:
        """VQGAN's λ: gradient norm of the reconstruction terms over that of the adversarial term at last_layer."""
        g_rec = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0]
        g_adv = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
        return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    def forward(
        self,
        recon: torch.Tensor,
        target: torch.Tensor,
        aux_losses: dict[str, torch.Tensor],
        step: int,
        train: bool = True,
        last_layer: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> LossOutput:
        """recon, target: same shape; step: optimizer steps so far; weight: optional per-value weights of the
        reconstruction terms (the data's adapter gives them, e.g. galaxy masks). In evaluation (train=False) the
        adversarial terms are left out of the loss and only the discriminator's mean logits are reported."""
        terms = {**self.reconstruction_terms(recon, target, weight), **aux_losses}
        if not self.gan_active(step):
            return LossOutput.of(terms)
        recon = recon.float()
        if not train:
            with torch.no_grad():
                return LossOutput.of(
                    terms,
                    extras={
                        "disc/logits_real": self.discriminator(target.float()).mean(),
                        "disc/logits_fake": self.discriminator(recon).mean(),
                    },
                )
        self.discriminator.requires_grad_(False)  # D scores recon for the tokenizer; D's own grads come below
        adversarial = hinge_g_loss(self.discriminator(recon))
        self.discriminator.requires_grad_(True)
        extras: dict[str, torch.Tensor] = {}
        weight: float | torch.Tensor = self.gan_weight
        if self.adaptive:
            if last_layer is None:
                raise ValueError("model.loss.gan.adaptive_weight needs the tokenizer's last_layer")
            reconstruction = sum(v for k, v in terms.items() if k in self.weights)
            extras["gan_adaptive_weight"] = self.adaptive_weight(reconstruction, adversarial, last_layer)
            weight = weight * extras["gan_adaptive_weight"]
        terms["gan"] = weight * adversarial
        logits_real, logits_fake = self.discriminator(target.float()), self.discriminator(recon.detach())
        disc_loss = hinge_d_loss(logits_real, logits_fake)
        extras.update(
            {
                "disc/loss": disc_loss.detach(),
                "disc/logits_real": logits_real.mean().detach(),
                "disc/logits_fake": logits_fake.mean().detach(),
            }
        )
        return LossOutput.of(terms, extras, disc_loss)


def standardize_codes(vectors: torch.Tensor) -> torch.Tensor:
    """Code vectors [V, D] standardized per dimension over the V codes (float32), so streams are comparable."""
    v = vectors.double()
    return ((v - v.mean(0)) / v.std(0).clamp_min(1e-12)).float()


def code_matrix(ranges: list, codes: dict[str, torch.Tensor], vocab_size: int) -> torch.Tensor:
    """Every id's standardized code vector, each stream in columns of its own: [vocab_size, Σ D_stream], zeros for
    the specials and for streams without codes (Transformer.set_codes)."""
    blocks = [
        (r, standardize_codes(codes[f"{r.modality}/{r.stream}"])) for r in ranges if f"{r.modality}/{r.stream}" in codes
    ]
    out = torch.zeros(vocab_size, sum(b.shape[1] for _, b in blocks))
    col = 0
    for r, block in blocks:
        out[r.start : r.stop, col : col + block.shape[1]] = block
        col += block.shape[1]
    return out


class ExpectedCodeLoss(nn.Module):
    """The transformer's reconstruction loss (README, "Downstream transformers"): for each (modality, stream) range r
    of the vocabulary with code vectors C_r [V_r, D_r] (the tokenizer's `code_vectors`, standardized per dimension
    over the V_r codes so that streams are comparable),

        p = softmax(logits restricted to r's ids)      ê = p @ Ĉ_r      loss_r = mean((ê − Ĉ_r[target])²)

    over at most `positions` target positions of that range drawn at random per call (all when fewer), so the cost
    does not grow with the sequence length. A wrong token costs by how far its code lies from the right one.

    codes: {"<modality>/<stream>": Tensor [V_r, D_r]} for the ranges that get the loss; ranges: vocab.ranges.
    """

    def __init__(self, ranges: list, codes: dict[str, torch.Tensor], positions: int = 256):
        super().__init__()
        self.positions = positions
        self.bounds: dict[str, tuple[int, int]] = {}
        by_name = {f"{r.modality}/{r.stream}": r for r in ranges}
        for name, vectors in codes.items():
            if name not in by_name:
                raise KeyError(f"ExpectedCodeLoss: no vocabulary range {name!r}; ranges: {sorted(by_name)}")
            r = by_name[name]
            if vectors.ndim != 2 or len(vectors) != r.size:
                raise ValueError(f"ExpectedCodeLoss: {name} has {r.size} ids but code vectors {tuple(vectors.shape)}")
            self.register_buffer(self._key(name), standardize_codes(vectors), persistent=False)
            self.bounds[name] = (r.start, r.stop)

    @staticmethod
    def _key(name: str) -> str:
        return "codes_" + name.replace("/", "__")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """logits [B, T, V] (position t predicts targets[:, t]), targets [B, T] global ids -> {name: loss}; a range
        with no target in the batch is left out."""
        flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        out = {}
        for name, (lo, hi) in self.bounds.items():
            where = ((flat_targets >= lo) & (flat_targets < hi)).nonzero().flatten()
            if len(where):
                out[name] = self.term(name, flat_logits[where, lo:hi], flat_targets[where] - lo)
        return out

    def term(
        self, name: str, logits: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One stream's loss from its own logits [n, V_r] and local target ids [n] (n ≥ 1), on ≤ `positions` rows
        drawn with `generator` (a CPU generator; pass one seeded by the step for runs that resume exactly)."""
        if len(targets) > self.positions:
            rows = torch.randperm(len(targets), generator=generator)[: self.positions].to(targets.device)
            logits, targets = logits[rows], targets[rows]
        codes = getattr(self, self._key(name))
        expected = logits.float().softmax(-1) @ codes
        return (expected - codes[targets]).pow(2).mean()


def expected_codes(
    logits: torch.Tensor, codes: torch.Tensor, grid: tuple[int, ...], log_probs: bool = False
) -> torch.Tensor:
    """Each cell's expected code vector under softmax(logits): logits [B·cells or B, cells, V] over one stream's ids,
    codes [V, D] its code vectors -> [B, *grid, D], cells in raster order (what tokenizer.decode_codes reads).
    log_probs: `logits` are already log-probabilities (log_softmax), whose exp is the distribution: training shares
    one log_softmax between the cross-entropy and this (over 8640 ids, a softmax pass and its backward cost as much
    as the LM head's matmul)."""
    probs = logits.float().exp() if log_probs else logits.float().softmax(-1)
    return (probs @ codes).reshape(-1, *grid, codes.shape[1])


class DecodedFieldLoss:
    """The data-space loss of a field forecast on tokens (model.decode_weight): the store's tokenizer decodes each
    predicted frame's expected code vectors (p = softmax(logits of a cell's stream), ê = p @ C, the tokenizer's own
    codes: FSQ grid points, amplitude levels) and the true future tokens' codes; the loss is the mean absolute
    difference of the two fields (normalized units):

        loss = mean |decode(ê) − decode(C[true ids])|

    Cross-entropy alone scores a wrong token the same however close its field lies to the truth, and where the
    future is uncertain the most probable token is a sharp but wrong field; this term asks the distribution's mean
    to decode to the future, so that a forecast from it (FieldForecast pick="soft") estimates the conditional mean
    in data space, as a pixel-space operator trained on an L1/L2 loss does. The tokenizer is frozen (eval mode, no
    gradient into it) and kept out of the module's state: checkpoints hold the transformer alone.

    tokenizer: a fields tokenizer with decode_codes (tokenizers/phaedra.py); streams: its streams in the order of
    each cell's tokens; grid: the token grid."""

    def __init__(self, tokenizer: nn.Module, streams: list[str], grid: tuple[int, ...]):
        if not callable(getattr(tokenizer, "decode_codes", None)):
            raise TypeError(
                f"model.decode_weight needs a tokenizer that decodes code vectors (decode_codes); "
                f"{type(tokenizer).__name__} has none: set model.decode_weight=0"
            )
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.streams, self.grid = list(streams), tuple(grid)
        self.codes = {s: tokenizer.code_vectors(s).detach().float() for s in self.streams}

    def __call__(
        self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], log_probs: bool = False
    ) -> torch.Tensor:
        """logits {stream: [B·cells, V_stream]} (log-probabilities with `log_probs`) and local target ids
        {stream: [B·cells]}, cells in raster order -> the scalar loss."""
        cells = math.prod(self.grid)
        device = next(iter(logits.values())).device
        self.tokenizer.to(device)
        expected, true = {}, {}
        for s in self.streams:
            if s not in logits or logits[s].shape[0] % cells:
                got = None if s not in logits else tuple(logits[s].shape)
                raise ValueError(f"DecodedFieldLoss: stream {s!r} needs whole frames of {cells} cells, got {got}")
            codes = self.codes[s] = self.codes[s].to(device)
            expected[s] = expected_codes(logits[s], codes, self.grid, log_probs)
            true[s] = codes[targets[s]].view(-1, *self.grid, codes.shape[1])
        with torch.no_grad():
            target = self.tokenizer.decode_codes(true).float()
        return (self.tokenizer.decode_codes(expected).float() - target).abs().mean()
