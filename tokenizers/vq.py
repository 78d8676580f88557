"""Cosine-similarity vector quantizer (LlamaGen style) with optional entropy term and dead-code re-init.

Codes and inputs are L2-normalised, so the nearest code is the one of highest cosine similarity.
For z: [..., D] (normalised ẑ) and its code e (normalised codebook row):
    codebook loss   = mean((e − sg ẑ)²)
    commitment loss = β · mean((sg e − ẑ)²)
    entropy loss    = w · (mean_n H(p_n) − H(mean_n p_n)),  p_n = softmax(−‖ẑ_n − e_k‖² / τ)
                      (confident per-vector choices, diverse over the batch; w = 0 by default)
The output is ẑ + sg(e − ẑ) (straight-through). Quantization runs in fp32.
Dead codes: with `dead_code_interval` > 0, every that many training calls the codes not chosen since the
last check are replaced by randomly chosen current inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokenizers.base import check_ids, full_precision


class CosineVectorQuantizer(nn.Module):
    def __init__(
        self,
        codebook_size: int = 16384,
        dim: int = 8,
        beta: float = 0.25,
        entropy_weight: float = 0.0,
        entropy_temperature: float = 0.01,
        dead_code_interval: int = 0,
    ):
        super().__init__()
        if codebook_size < 2 or dim < 1:
            raise ValueError(f"need codebook_size >= 2 and dim >= 1, got {codebook_size}, {dim}")
        self.codebook_size, self.dim, self.beta = codebook_size, dim, beta
        self.entropy_weight, self.entropy_temperature = entropy_weight, entropy_temperature
        self.dead_code_interval = dead_code_interval
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim))
        self.register_buffer("hits", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def codes(self) -> torch.Tensor:
        """[K, D] the normalised codebook (what each id stands for)."""
        return F.normalize(self.codebook.float(), dim=-1)

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        check_ids(ids, self.codebook_size, "codebook")
        return self.codes()[ids]

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """z: [..., D] -> (z_q [..., D] fp32 straight-through, ids [...] int64, losses {name: scalar})."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"quantizer expects last dimension {self.dim}, got shape {tuple(z.shape)}")
        with full_precision(z.device):
            z_hat = F.normalize(z.float(), dim=-1)
            flat = z_hat.reshape(-1, self.dim)
            codes = self.codes()
            similarity = flat @ codes.T  # [N, K]
            ids = similarity.argmax(dim=-1)
            e = codes[ids]
            losses = {
                "codebook": F.mse_loss(e, flat.detach()),
                "commitment": self.beta * F.mse_loss(flat, e.detach()),
            }
            if self.entropy_weight > 0:
                losses["entropy"] = self.entropy_weight * self.entropy_term(2 - 2 * similarity)
            if self.training:
                self._track_and_revive(ids, flat.detach())
            z_q = flat + (e - flat).detach()
        return z_q.reshape(z_hat.shape), ids.reshape(z.shape[:-1]), losses

    def entropy_term(self, sq_distance: torch.Tensor) -> torch.Tensor:
        """mean per-vector entropy − entropy of the mean assignment, p = softmax(−d/τ) over codes."""
        log_p = F.log_softmax(-sq_distance / self.entropy_temperature, dim=-1)
        p = log_p.exp()
        per_vector = -(p * log_p).sum(-1).mean()
        mean_p = p.mean(0)
        batch = -(mean_p * torch.log(mean_p.clamp_min(1e-12))).sum()
        return per_vector - batch

    @torch.no_grad()
    def _track_and_revive(self, ids: torch.Tensor, inputs: torch.Tensor) -> None:
        self.hits += torch.bincount(ids, minlength=self.codebook_size)
        self.calls += 1
        if self.dead_code_interval <= 0 or int(self.calls) % self.dead_code_interval:
            return
        dead = (self.hits == 0).nonzero().flatten()
        if len(dead):
            pick = torch.randint(len(inputs), (len(dead),), device=inputs.device)
            self.codebook.data[dead] = inputs[pick].to(self.codebook.dtype)
        self.hits.zero_()
