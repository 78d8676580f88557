"""EEG MLP-FSQ tokenizer: one token per channel-patch, optionally conditioned on the sampling rate.

x: [B, P] one channel's patch of P samples (normalized per channel by the datamodule)
    -> Linear(P, h0) -> residual MLP blocks -> Linear(., len(levels)) -> FSQ -> mirror decoder -> [B, P]
tokens: {"tokens": int64 [B] in [0, prod(levels))}   (64,000 codes for the default [8,8,8,5,5,5])

With `use_conditioning`, every block is modulated by FiLM from the sampling rate `sfreq` (Hz, [B]):
h <- h·(1+γ(c)) + β(c), with γ and β layers zero-initialised so each block starts as the identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from tokenizers.base import TokenizerOutput
from tokenizers.fsq import FSQ


class Snake(nn.Module):
    """Snake(x) = x + sin²(αx)/α with one α per feature, α = exp(a) > 0 (a = 0 at init, so α = 1).

    α is floored at 1e-6 so 1/α stays finite however far `a` is driven down.
    """

    def __init__(self, features: int):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.log_alpha.exp().clamp_min(1e-6)
        return x + torch.sin(alpha * x).pow(2) / alpha


def make_activation(name: str, features: int) -> nn.Module:
    activations = {"relu": nn.ReLU, "gelu": nn.GELU}
    if name == "snake":
        return Snake(features)
    if name not in activations:
        raise ValueError(f"activation must be one of relu, gelu, snake; got {name!r}")
    return activations[name]()


def make_norm(name: str, features: int) -> nn.Module:
    norms = {"layer": lambda: nn.LayerNorm(features), "rms": lambda: nn.RMSNorm(features), "none": nn.Identity}
    if name not in norms:
        raise ValueError(f"norm must be one of {sorted(norms)}; got {name!r}")
    return norms[name]()


def rate_features(sfreq: torch.Tensor, dim: int, min_hz: float, max_hz: float) -> torch.Tensor:
    """Sinusoidal features of log(sfreq): [B] -> [B, dim].

    u = (log f − log min_hz) / (log max_hz − log min_hz) maps the rates users have to [0, 1];
    features sin/cos(π·2^k·u), k = 0 … dim/2 − 1, so an octave (128 vs 256 Hz) moves u by
    log 2 / log(max/min) and the low-k features apart.
    """
    u = (sfreq.double().log() - math.log(min_hz)) / (math.log(max_hz) - math.log(min_hz))
    freqs = math.pi * 2.0 ** torch.arange(dim // 2, dtype=torch.float64, device=sfreq.device)
    angles = u[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()


class ResidualMLPBlock(nn.Module):
    """Linear -> norm -> activation -> FiLM (if cond_dim) -> dropout, plus the input when d_in == d_out."""

    def __init__(self, d_in: int, d_out: int, norm: str, activation: str, dropout: float, cond_dim: int | None):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.norm = make_norm(norm, d_out)
        self.act = make_activation(activation, d_out)
        self.drop = nn.Dropout(dropout)
        self.residual = d_in == d_out
        self.film = nn.Linear(cond_dim, 2 * d_out) if cond_dim else None
        if self.film is not None:  # γ = β = 0: the block starts as if unconditioned
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        y = self.act(self.norm(self.linear(h)))
        if self.film is not None:
            gamma, beta = self.film(cond).chunk(2, dim=-1)
            y = y * (1 + gamma) + beta
        y = self.drop(y)
        return h + y if self.residual else y


class MLPStack(nn.Module):
    """Residual MLP blocks through `dims` (the first block keeps dims[0], then one block per change)."""

    def __init__(self, dims: Sequence[int], norm: str, activation: str, dropout: float, cond_dim: int | None):
        super().__init__()
        pairs = [(dims[0], dims[0])] + list(zip(dims[:-1], dims[1:], strict=True))
        self.blocks = nn.ModuleList(ResidualMLPBlock(a, b, norm, activation, dropout, cond_dim) for a, b in pairs)

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, cond)
        return h


class EEGTokenizer(nn.Module):
    def __init__(
        self,
        patch_len: int = 256,
        hidden_dims: Sequence[int] = (512, 256, 128),
        levels: Sequence[int] = (8, 8, 8, 5, 5, 5),
        activation: str = "relu",
        norm: str = "layer",
        dropout: float = 0.0,
        use_conditioning: bool = False,
        cond_dim: int = 64,
        rate_range_hz: Sequence[float] = (64.0, 2048.0),
    ):
        super().__init__()
        if not hidden_dims:
            raise ValueError("hidden_dims needs at least one width")
        self.patch_len = patch_len
        self.use_conditioning = use_conditioning
        self.rate_range_hz = (float(rate_range_hz[0]), float(rate_range_hz[1]))
        self.fsq = FSQ(levels)
        film_dim = cond_dim if use_conditioning else None
        dims = list(hidden_dims)
        self.cond_mlp = (
            nn.Sequential(nn.Linear(cond_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
            if use_conditioning
            else None
        )
        self.cond_dim = cond_dim
        self.in_proj = nn.Linear(patch_len, dims[0])
        self.encoder = MLPStack(dims, norm, activation, dropout, film_dim)
        self.to_latent = nn.Linear(dims[-1], self.fsq.dim)
        self.from_latent = nn.Linear(self.fsq.dim, dims[-1])
        self.decoder = MLPStack(dims[::-1], norm, activation, dropout, film_dim)
        self.out_proj = nn.Linear(dims[0], patch_len)

    @property
    def streams(self) -> dict[str, int]:
        return {"tokens": self.fsq.codebook_size}

    def code_vectors(self, stream: str) -> torch.Tensor:
        if stream != "tokens":
            raise KeyError(f"unknown stream {stream!r}; this tokenizer has ['tokens']")
        return self.fsq.all_codes()

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.patch_len:
            raise ValueError(f"EEGTokenizer expects patches of shape [B, {self.patch_len}], got {tuple(x.shape)}")

    def _condition(self, sfreq: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
        """The FiLM condition c [B, cond_dim] from the sampling rates, or None when unconditioned."""
        if self.cond_mlp is None:
            return None
        if sfreq is None:
            raise ValueError(
                "this EEGTokenizer conditions on the sampling rate (use_conditioning=true): "
                "pass sfreq=<Hz tensor [B]> (the batch key 'sfreq')"
            )
        sfreq = torch.as_tensor(sfreq, dtype=torch.float32, device=device).reshape(-1).expand(batch)
        if (sfreq <= 0).any():
            raise ValueError(f"sfreq must be positive Hz, got {sfreq.tolist()}")
        return self.cond_mlp(rate_features(sfreq, self.cond_dim, *self.rate_range_hz))

    def _encode(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fsq(self.to_latent(self.encoder(self.in_proj(x), cond)))

    def _decode_codes(self, codes: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        codes = codes.to(self.from_latent.weight.dtype)
        return self.out_proj(self.decoder(self.from_latent(codes), cond))

    def forward(self, x: torch.Tensor, sfreq: torch.Tensor | None = None) -> TokenizerOutput:
        """x: [B, P], sfreq: [B] Hz (required with conditioning) -> recon [B, P], tokens {"tokens": [B]}."""
        self._check(x)
        cond = self._condition(sfreq, x.shape[0], x.device)
        codes, ids = self._encode(x, cond)
        return TokenizerOutput(recon=self._decode_codes(codes, cond), tokens={"tokens": ids})

    def encode(self, x: torch.Tensor, sfreq: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self._check(x)
        return {"tokens": self._encode(x, self._condition(sfreq, x.shape[0], x.device))[1]}

    def decode(self, tokens: dict[str, torch.Tensor], sfreq: torch.Tensor | None = None) -> torch.Tensor:
        if "tokens" not in tokens:
            raise ValueError(f"decode needs the token stream 'tokens', got {sorted(tokens)}")
        ids = tokens["tokens"]
        cond = self._condition(sfreq, ids.shape[0], ids.device)
        return self._decode_codes(self.fsq.ids_to_codes(ids), cond)
