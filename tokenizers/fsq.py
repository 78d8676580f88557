"""Finite Scalar Quantization (Mentzer et al. 2024) with the corrected bounding of the Phaedra spec.

Per dimension with L levels (ε = 1e-3):
    half   = (L-1)(1+ε)/2            paper_parity: (L-1)(1-ε)/2
    offset = 0.5 if L even else 0
    shift  = atanh(offset/half)      paper_parity: tan(offset/half)
    k      = round(tanh(z + shift)·half − offset)   clamped to the L integer levels
    code   = k / ⌊L/2⌋
    index  = Σ_i (k_i + ⌊L_i/2⌋)·B_i,  B = cumprod([1, L_1, …, L_{d-1}])

With paper_parity (the released code's tan and 1−ε) a 1024-level grid reaches only 1022 levels.
An input gain g quantizes g·z and returns code/g. Quantization always runs in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from tokenizers.base import check_ids, full_precision


class FSQ(nn.Module):
    """Quantizes the last dimension of `z: [..., d]` with `levels[i]` levels in dimension i.

    forward(z) -> (z_q: [..., d] fp32 codes with a straight-through gradient, ids: [...] int64)
    """

    def __init__(
        self,
        levels: Sequence[int],
        gain: float = 1.0,
        eps: float = 1e-3,
        paper_parity: bool = False,
    ):
        super().__init__()
        if len(levels) == 0 or any(int(L) < 2 for L in levels):
            raise ValueError(f"FSQ levels must be a non-empty list of integers >= 2, got {list(levels)}")
        self.levels = [int(L) for L in levels]
        self.gain = float(gain)
        self.eps = float(eps)
        self.paper_parity = bool(paper_parity)
        # paper_parity computes its constants in float32 as the released code does (tan(0.5/half) of L = 4 then has
        # the released bits, 3e-8 from the float64 value), the corrected variant in float64, rounded once
        L = torch.tensor(self.levels, dtype=torch.float32 if paper_parity else torch.float64)
        stretch = (1 - eps) if paper_parity else (1 + eps)
        half = (L - 1) * stretch / 2
        offset = torch.where(L % 2 == 0, 0.5, 0.0).to(L.dtype)
        shift = torch.tan(offset / half) if paper_parity else torch.atanh(offset / half)
        basis = torch.cumprod(torch.tensor([1] + self.levels[:-1], dtype=torch.int64), dim=0)
        self.register_buffer("_half", half.float(), persistent=False)
        self.register_buffer("_offset", offset.float(), persistent=False)
        self.register_buffer("_shift", shift.float(), persistent=False)
        self.register_buffer("_half_width", (L // 2).float(), persistent=False)
        self.register_buffer("_k_min", -(L // 2).float(), persistent=False)
        self.register_buffer("_k_max", ((L - 1) - L // 2).float(), persistent=False)
        self.register_buffer("_basis", basis, persistent=False)

    @property
    def dim(self) -> int:
        return len(self.levels)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if z.shape[-1] != self.dim:
            raise ValueError(f"FSQ expects last dimension {self.dim}, got shape {tuple(z.shape)}")
        with full_precision(z.device):
            scaled = z.float() * self.gain
            bounded = torch.tanh(scaled + self._shift) * self._half - self._offset
            k = torch.clamp(torch.round(bounded), self._k_min, self._k_max)
            if torch.is_grad_enabled() and bounded.requires_grad:
                k = bounded + (k - bounded).detach()  # straight-through
            ids = self.k_to_ids(k.detach())
            return self.k_to_codes(k), ids

    def k_to_codes(self, k: torch.Tensor) -> torch.Tensor:
        """Integer levels k: [..., d] -> codes in [-1, 1] / gain."""
        return k / self._half_width / self.gain

    def k_to_ids(self, k: torch.Tensor) -> torch.Tensor:
        return ((k.round().long() - self._k_min.long()) * self._basis).sum(-1)

    def ids_to_k(self, ids: torch.Tensor) -> torch.Tensor:
        check_ids(ids, self.codebook_size, "FSQ")
        levels = torch.tensor(self.levels, device=ids.device)
        return ((ids.long().unsqueeze(-1) // self._basis) % levels).float() + self._k_min

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: [...] -> codes: [..., d] (fp32), the same values forward() returns."""
        return self.k_to_codes(self.ids_to_k(ids))

    def all_codes(self) -> torch.Tensor:
        """[codebook_size, d]: the code of every id, in id order."""
        return self.ids_to_codes(torch.arange(self.codebook_size, device=self._basis.device))
