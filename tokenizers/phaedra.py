"""Phaedra (Lingsch et al. 2026): a conv autoencoder with morphology FSQ + fine amplitude tokens.

The latent [B, 9, h, w] is split by channel: channels 0-7 go through the morphology FSQ
(levels [5,4,4,3,3,3,2,2] = 8640 codes, gain 10), channel 8 through a 1-D FSQ of 1024 levels
(gain 0.1). Each latent position emits one `morph` id and one `amp` id. With `amp_levels=None`
the same class is the FSQ-only baseline the paper compares against (8 latent channels, one stream). With
`morph2_levels` a second coarse FSQ group of latent channels follows the morphology's, one more id per position:
`experiment=fsq_matched`'s morph2 [4, 4, 4, 4, 4] (1024 codes, gain as the morphology's) in place of the 1024 fine
amplitude levels spends exactly Phaedra's 23.1 bits per position with FSQ alone.

Tokens for input [B, C, H, W] and f = 2^(len(ch_mult)-1):
    morph:  int64 [B, H/f, W/f] in [0, prod(morph_levels))
    morph2: int64 [B, H/f, W/f] in [0, prod(morph2_levels)) (only with morph2_levels)
    amp:    int64 [B, H/f, W/f] in [0, amp_levels)          (absent for the FSQ-only baselines)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tokenizers.base import TokenizerOutput, check_image_input, full_precision
from tokenizers.blocks import Decoder, Encoder
from tokenizers.fsq import FSQ


class PhaedraTokenizer(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        ch: int = 128,
        ch_mult: Sequence[int] = (2, 2, 4),
        num_res_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16, 32),
        resolution: int = 128,
        dropout: float = 0.0,
        norm_groups: int = 32,
        morph_levels: Sequence[int] = (5, 4, 4, 3, 3, 3, 2, 2),
        morph_gain: float = 10.0,
        amp_levels: int | None = 1024,
        amp_gain: float = 0.1,
        paper_parity: bool = False,
        commitment_weight: float = 0.0,
        amp_range_weight: float = 0.0,
        morph2_levels: Sequence[int] | None = None,
        quant_conv_kernel: int = 3,
    ):
        super().__init__()
        if amp_levels is not None and amp_levels < 2:  # 0 would silently build the FSQ-only baseline
            raise ValueError(
                f"amp_levels must be ≥ 2 fine amplitude levels, or null for the FSQ-only baseline; got {amp_levels}"
            )
        self.in_channels = in_channels
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        self.morph = FSQ(morph_levels, gain=morph_gain, paper_parity=paper_parity)
        self.morph2 = FSQ(morph2_levels, gain=morph_gain, paper_parity=paper_parity) if morph2_levels else None
        self.amp = FSQ([amp_levels], gain=amp_gain, paper_parity=paper_parity) if amp_levels else None
        # latent channels, in order: morphology, second group, amplitude
        self.groups = {"morph": self.morph, "morph2": self.morph2, "amp": self.amp}
        self.groups = {name: q for name, q in self.groups.items() if q is not None}
        self.z_channels = sum(q.dim for q in self.groups.values())
        self.commitment_weight = commitment_weight
        self.amp_range_weight = amp_range_weight
        arch = dict(
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=num_res_blocks,
            attn_resolutions=attn_resolutions,
            resolution=resolution,
            z_channels=self.z_channels,
            dropout=dropout,
            groups=norm_groups,
        )
        self.encoder = Encoder(in_channels, **arch)
        self.decoder = Decoder(in_channels, **arch)
        if quant_conv_kernel % 2 == 0:
            raise ValueError(f"quant_conv_kernel must be odd (a same-size convolution), got {quant_conv_kernel}")
        k = quant_conv_kernel
        self.quant_conv = nn.Conv2d(self.z_channels, self.z_channels, k, padding=k // 2)
        self.post_quant_conv = nn.Conv2d(self.z_channels, self.z_channels, k, padding=k // 2)

    @property
    def streams(self) -> dict[str, int]:
        return {name: q.codebook_size for name, q in self.groups.items()}

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output weight (where the adaptive GAN weight compares gradients)."""
        return self.decoder.last_layer

    def code_vectors(self, stream: str) -> torch.Tensor:
        """[V, D]: the latent code each id of `stream` stands for (FSQ grid point / gain)."""
        return self._quantizer(stream).all_codes()

    def _quantizer(self, stream: str) -> FSQ:
        if stream not in self.streams:
            raise KeyError(f"unknown stream {stream!r}; this tokenizer has {list(self.streams)}")
        return self.groups[stream]

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> the continuous latent [B, z_channels, H/f, W/f] the quantizers read (quant_conv's
        output; channels in the order of `groups`)."""
        check_image_input(x, self.in_channels, self.downsample_factor, type(self).__name__)
        h = self.encoder(x)
        # the latent the quantizers read is made in fp32 even under bf16 autocast: a bf16 latent (spacing 1/32 at
        # |z| ≈ 5) is coarser than the amplitude's 1024 levels and leaves ~8 % of them unreachable
        # (bench/bench_quantizer_precision.py)
        with full_precision(h.device):
            return self.quant_conv(h.to(self.quant_conv.weight.dtype))

    def _quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        z = rearrange(self.latent(x), "b c h w -> b h w c")
        codes, tokens, aux, start = [], {}, {}, 0
        for name, quantizer in self.groups.items():
            part = z[..., start : start + quantizer.dim]
            start += quantizer.dim
            q, tokens[name] = quantizer(part)
            codes.append(q)
            if name != "amp" and self.commitment_weight > 0:  # the coarse groups' commitment, summed
                term = self.commitment_weight * F.mse_loss(part.float(), q.detach())
                aux["commitment"] = aux["commitment"] + term if "commitment" in aux else term
            if name == "amp" and self.amp_range_weight > 0:
                # keep the amplitude pre-activation out of tanh saturation (|g·z| > 2), where it stops learning
                aux["amp_range"] = self.amp_range_weight * F.relu(part.float().abs() * self.amp.gain - 2).pow(2).mean()
        return torch.cat(codes, dim=-1), tokens, aux

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        codes = rearrange(codes, "b h w c -> b c h w").to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(codes))

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        """x: [B, C, H, W] normalized field -> recon [B, C, H, W], tokens, aux_losses."""
        codes, tokens, aux = self._quantize(x)
        return TokenizerOutput(recon=self._decode_codes(codes), tokens=tokens, aux_losses=aux)

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._quantize(x)[1]

    def decode(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = set(self.streams) - set(tokens)
        if missing:
            raise ValueError(f"decode needs token streams {sorted(self.streams)}, missing {sorted(missing)}")
        return self.decode_codes({name: q.ids_to_codes(tokens[name]) for name, q in self.groups.items()})

    def decode_codes(self, codes: dict[str, torch.Tensor]) -> torch.Tensor:
        """{stream: code vectors [B, h, w, D_stream]} (code_vectors(stream)[ids], or any point between them, e.g. a
        transformer's expected code) -> the decoded field [B, C, H, W]; differentiable in the codes."""
        missing = set(self.streams) - set(codes)
        if missing:
            raise ValueError(f"decode_codes needs streams {sorted(self.streams)}, missing {sorted(missing)}")
        for name, q in self.groups.items():
            if codes[name].shape[-1] != q.dim:
                raise ValueError(
                    f"decode_codes: stream {name!r} has {q.dim}-d codes, got shape {tuple(codes[name].shape)}"
                )
        return self._decode_codes(torch.cat([codes[name] for name in self.groups], dim=-1))
