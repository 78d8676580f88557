"""The Tokenizer contract shared by every SciTok tokenizer, and the data metadata every checkpoint carries.

Pure torch: nothing here imports Lightning or Hydra, so `load_tokenizer` users need neither.

A tokenizer is an nn.Module with
    streams: dict[str, int]                            token stream name -> vocabulary size
    forward(x, **cond) -> TokenizerOutput              recon (shape of x), tokens per stream, aux losses
    encode(x, **cond) -> dict[str, LongTensor]         int64 ids in [0, streams[name])
    decode(tokens, **cond) -> Tensor                   in eval mode decode(encode(x)) == forward(x).recon
    code_vectors(stream) -> Tensor [V, D]              what each id of a stream stands for
and optionally `last_layer` (the decoder's output weight), which the adaptive GAN weight needs.
`cond` are keyword tensors taken from the batch by the data's adapter (e.g. `sfreq` for EEG).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class TokenizerOutput:
    """recon: same shape as the input; tokens: stream -> int64 ids; aux_losses: name -> scalar."""

    recon: torch.Tensor
    tokens: dict[str, torch.Tensor]
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Tokenizer(Protocol):
    """What every SciTok tokenizer provides (see the module docstring); checked by `check_tokenizer`."""

    @property
    def streams(self) -> dict[str, int]: ...

    def forward(self, x: torch.Tensor, **cond: torch.Tensor) -> TokenizerOutput: ...

    def encode(self, x: torch.Tensor, **cond: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def decode(self, tokens: dict[str, torch.Tensor], **cond: torch.Tensor) -> torch.Tensor: ...

    def code_vectors(self, stream: str) -> torch.Tensor: ...


@runtime_checkable
class HasLastLayer(Protocol):
    """Optional: the decoder's last weight, where VQGAN's adaptive weight balances gradients."""

    @property
    def last_layer(self) -> torch.Tensor: ...


CONTRACT = ("streams", "forward", "encode", "decode", "code_vectors")


def check_tokenizer(tokenizer: Any) -> None:
    """Raise TypeError naming what `tokenizer` lacks of the Tokenizer protocol, or what is malformed."""
    name = f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}"
    missing = [m for m in CONTRACT if not hasattr(tokenizer, m)]
    if isinstance(tokenizer, nn.Module) and type(tokenizer).forward is nn.Module.forward:
        missing.append("forward")  # nn.Module has a placeholder forward that only raises
    if missing:
        raise TypeError(
            f"{name} does not follow the Tokenizer protocol (tokenizers/base.py): missing {', '.join(missing)}"
        )
    streams = tokenizer.streams
    if (
        not isinstance(streams, dict)
        or not streams
        or not all(isinstance(k, str) and isinstance(v, int) and v >= 1 for k, v in streams.items())
    ):
        raise TypeError(
            f"{name}.streams must be a non-empty dict of stream name -> vocabulary size (int >= 1), got {streams!r}"
        )


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off (quantizers run in fp32: bf16 cannot hold a fine grid). The meta device has no autocast."""
    return contextlib.nullcontext() if device.type == "meta" else torch.autocast(device.type, enabled=False)


def check_ids(ids: torch.Tensor, size: int, what: str) -> None:
    """Raise ValueError unless every id lies in [0, size). Meta tensors hold no values and pass."""
    if ids.device.type == "meta" or ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= size:
        raise ValueError(f"{what} ids must lie in [0, {size}), got [{lo}, {hi}]")


def codebook_stats(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Statistics of a codebook's use from its histogram `counts` [V] (how often each id occurred), with
    p = counts / Σcounts:  usage = 100·|{i: counts_i > 0}| / V (%),  entropy_bits = −Σ_{p_i > 0} p_i log2 p_i,
    perplexity = 2^entropy_bits (the number of equally used codes with that entropy). float64 scalars; all 0
    for an empty histogram except perplexity (1)."""
    counts = counts.double()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p[p > 0] * torch.log2(p[p > 0])).sum()
    return {"usage": 100 * (counts > 0).double().mean(), "entropy_bits": entropy, "perplexity": torch.exp2(entropy)}


def check_image_input(x: torch.Tensor, channels: int, multiple: int, name: str) -> None:
    """Raise ValueError unless x is [B, channels, H, W] with H and W divisible by `multiple`."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} expects input of shape [B, {channels}, H, W], got {tuple(x.shape)}")
    H, W = x.shape[-2:]
    if H % multiple or W % multiple:
        raise ValueError(
            f"{name} expects H and W divisible by its downsampling factor {multiple}, got {tuple(x.shape)}"
        )


# every normalization a DataMetadata may name (documented in its docstring; __post_init__ refuses any other)
NORMALIZATIONS = ("standardize", "robust", "ems", "unit_range", "symmetric_range", "robust_arcsinh", "none")


@dataclass(frozen=True)
class DataMetadata:
    """What a tokenizer's inputs were in training: one schema for every data kind, saved in every checkpoint
    (as a plain dict under "data") and returned by `load_tokenizer` as `tokenizer.metadata`.

    kind:          the data kind. For a TokenizerModule it is its batch adapter's (datamodules/adapters.py):
                   "fields", "eeg", "images" or "galaxy_images"; the tokenizers encode.py fits for galaxies write
                   "galaxy_catalog" (catalog scalars, ScalarQuantileTokenizer) and "galaxy_spectra"
                   (SpectrumTokenizer)
    normalization: how a sample was normalized before the tokenizer saw it, one of NORMALIZATIONS:
                   "standardize"  x' = (x − mean[v]) / std[v] with the train split's statistics of variable v
                   "robust"       per channel and recording (EEG) or per spectrum (galaxy_spectra):
                                  (x − median) / (1.4826·MAD)  (no global statistics)
                   "ems"          per channel and recording: exponential moving standardization
                   "unit_range"   values scaled to [0, 1] (8/16-bit images by their dtype, float images min–max)
                   "symmetric_range"  values scaled to [-1, 1], 2·x − 1 of "unit_range" (LlamaGen's pixels)
                   "robust_arcsinh"  per object and band: asinh((x − median) / (3·MAD + 1e-6)) over the valid
                                  pixels (tokenizers.astro.robust_arcsinh; no global statistics)
                   "none"         the values as they are (galaxy_catalog: the tokenizer's quantile bins are fitted
                                  on the raw columns)
    variables:     names of the variables a sample can be (fields: "<dataset>/<variable>"; images: colour
                   channels; galaxy images: bands; galaxy_catalog: catalog columns; galaxy_spectra: ["flux"];
                   EEG: [] since every channel is tokenized alike)
    mean, std:     per variable, aligned with `variables`, for "standardize"; [] otherwise
    rates:         sampling rates in Hz that training saw (EEG); [] otherwise
    source:        where the weights come from when not (only) from this data: released weights and the input
                   convention they were trained with (tokenizers.load_released), or the file a fine-tuning run
                   started from (model.init_from); "" for a tokenizer SciTok trained from scratch
    """

    kind: str
    normalization: str
    variables: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"DataMetadata: normalization {self.normalization!r} is not one of the documented "
                f"{', '.join(map(repr, NORMALIZATIONS))} (tokenizers/base.py); add a new one there with its definition"
            )
        if self.normalization == "standardize" and not (len(self.variables) == len(self.mean) == len(self.std)):
            raise ValueError(
                f"DataMetadata: standardized data needs mean and std per variable, got "
                f"{len(self.variables)} variables, {len(self.mean)} means, {len(self.std)} stds"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataMetadata:
        return cls(**d)
