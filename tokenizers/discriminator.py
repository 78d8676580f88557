"""PatchGAN discriminator for the optional adversarial term of a tokenizer (LlamaGen / pix2pix recipe).

PatchGAN(in_channels, ch=64, n_layers=3) maps an image [B, C, H, W] to a grid of real/fake logits
[B, 1, ~H/2^n_layers − 2, ~W/2^n_layers − 2]: each logit judges one overlapping patch, so it works on any crop
size >= 2^n_layers · 4 pixels. Its hinge losses live with the other loss terms in lit_modules/losses.py.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchGAN(nn.Module):
    def __init__(self, in_channels: int = 3, ch: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"PatchGAN needs n_layers >= 1, got {n_layers}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = ch
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1  # the last feature layer keeps the resolution
            out = ch * min(2**i, 8)
            layers += [
                nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, True),
            ]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        self.min_size = 2**n_layers * 4
        for m in self.modules():  # DCGAN initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"PatchGAN expects images [B, C, H, W] with H, W >= {self.min_size}, got {tuple(x.shape)}")
        return self.net(x)
