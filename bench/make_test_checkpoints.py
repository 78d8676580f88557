"""Train the small checkpoints that tests judge quality on, once, and write them under tests/data/.

    python bench/make_test_checkpoints.py            # writes tests/data/svqvae_tiny.pt (minutes on a CPU)

A test that trained its model itself would judge weights that depend on the CPU's float rounding along the whole
training trajectory; judged on weights fixed on disk, only the rounding of one inference differs between CPUs.
Each file is {"config": constructor keyword arguments, "state_dict": tensors}, read with
torch.load(weights_only=True). Rerunning this on another CPU gives other weights (the tests' margins then have to be
checked again), so run it only to change what a checkpoint is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.images import BUNDLED, BundledImages  # noqa: E402
from tokenizers.load import atomic_write  # noqa: E402
from tokenizers.svqvae import SVQVAE  # noqa: E402

# The smallest SVQVAE and run that reconstruct well: with fewer steps the error stays near the mean colour's, with
# smaller crops 256-pixel tiles are out of distribution. Coffee is held out: test_svqvae_large tiles it.
SVQVAE_TINY = dict(
    ch=8, ch_mult=[1, 2, 2, 4], num_res_blocks=1, z_channels=16, codebook_size=256, norm_groups=4, dead_code_interval=25
)


def train_svqvae_tiny(steps: int = 600, crop: int = 64, batch: int = 16) -> SVQVAE:
    """SVQVAE_TINY trained with Adam on random crops of the bundled images except coffee."""
    torch.manual_seed(0)
    model = SVQVAE(**SVQVAE_TINY)
    images = [x for x, _ in BundledImages([b for b in BUNDLED if b != "coffee"]).load()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        crops = []
        for _ in range(batch):
            im = images[int(torch.randint(len(images), (1,), generator=g))]
            top, left = (int(torch.randint(n - crop + 1, (1,), generator=g)) for n in im.shape[1:])
            crops.append(im[:, top : top + crop, left : left + crop])
        x = torch.stack(crops)
        out = model(x)
        loss = F.mse_loss(out.recon, x) + sum(out.aux_losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 100 == 0:
            print(f"svqvae_tiny step {step + 1}/{steps}: loss {loss.item():.4f}", flush=True)
    return model.eval()


def save(path: Path, config: dict, model: torch.nn.Module) -> None:
    """Written to a temporary name and renamed, so an interrupted run leaves no half file."""
    with atomic_write(path) as tmp:
        torch.save({"config": config, "state_dict": model.state_dict()}, tmp)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


def main() -> None:
    save(ROOT / "tests" / "data" / "svqvae_tiny.pt", SVQVAE_TINY, train_svqvae_tiny())


if __name__ == "__main__":
    main()
