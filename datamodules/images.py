"""LightningDataModule for images: random training crops (with horizontal flips), fixed evaluation crops.

Batch: {"image": float32 [B, 3, crop, crop] in [0, 1]}.
Each image is split by columns: crops for training come from its left part, validation and test crops
from the right `holdout` fraction (at least one crop wide; alternating, on a fixed grid), so no
evaluation pixel is trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from datamodules.common import EpochSampler, InMemoryDataModule, TensorBatches, find_files
from lit_modules.adapters import BatchAdapter, ImageAdapter
from tokenizers.base import DataMetadata

log = logging.getLogger(__name__)
BUNDLED = ("astronaut", "coffee", "chelsea", "rocket", "retina", "immunohistochemistry", "brick", "grass", "gravel")


def to_chw01(a: np.ndarray, origin: str) -> torch.Tensor:
    """[H, W] or [H, W, C] integer or float array -> float32 [3, H, W] in [0, 1] (grey repeated, alpha dropped)."""
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{origin}: expected an [H, W] or [H, W, 1|3|4] image, got shape {a.shape}")
    a = a[..., :3]
    if np.issubdtype(a.dtype, np.integer):
        x = a.astype(np.float32) / np.iinfo(a.dtype).max
    else:
        x = a.astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{origin}: image holds NaN/Inf values")
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)  # float images (e.g. FITS): min-max to [0, 1]
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)
    return t.expand(3, -1, -1).clone() if t.shape[0] == 1 else t


class BundledImages:
    """Natural images and textures that ship inside scikit-image (no download)."""

    def __init__(self, names: Sequence[str] = BUNDLED):
        self.names = list(names)

    def load(self) -> list[tuple[torch.Tensor, str]]:
        import skimage.data

        out = []
        for name in self.names:
            if not hasattr(skimage.data, name):
                raise ValueError(f"scikit-image has no bundled image {name!r}; choose from {list(BUNDLED)}")
            out.append((to_chw01(getattr(skimage.data, name)(), f"skimage.data.{name}"), name))
        return out


class ImageFolder:
    """Your images: PNG, JPEG, TIFF (and FITS when astropy is installed), one file or a folder (recursive)."""

    extensions = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".fits", ".fit")

    def __init__(self, path: str | None = None):
        self.path = path

    def load(self) -> list[tuple[torch.Tensor, str]]:
        files = find_files(self.path, self.extensions, "ImageFolder")
        return [(to_chw01(read_image(f), str(f)), str(f)) for f in files]


def read_image(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".fits", ".fit"):
        try:
            from astropy.io import fits
        except ImportError:
            raise ModuleNotFoundError(f"{path}: reading FITS needs astropy: pip install astropy") from None
        data = fits.getdata(path)
        if data is None:
            raise ValueError(f"{path}: the primary HDU holds no image")
        return np.asarray(data, dtype=np.float32)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None


class CropSampler(EpochSampler):
    """`crops_per_image` random crops (top, left, flip) per training region per epoch, from (seed, epoch)."""

    def __init__(self, sizes: torch.Tensor, crop: int, crops_per_image: int, seed: int):
        super().__init__(seed)
        self.sizes, self.crop, self.crops_per_image = sizes, crop, crops_per_image  # sizes: [N, 2] (h, w)
        self.h_max, self.w_max = int(sizes[:, 0].max()), int(sizes[:, 1].max())

    def epoch_order(self, gen: torch.Generator) -> list[int]:
        image = torch.arange(len(self.sizes)).repeat_interleave(self.crops_per_image)
        span = (self.sizes[image] - self.crop + 1).double()
        top = (torch.rand(len(image), generator=gen, dtype=torch.float64) * span[:, 0]).long()
        left = (torch.rand(len(image), generator=gen, dtype=torch.float64) * span[:, 1]).long()
        flip = torch.randint(2, (len(image),), generator=gen)
        ids = ((image * self.h_max + top) * self.w_max + left) * 2 + flip
        return ids[torch.randperm(len(ids), generator=gen)].tolist()

    def epoch_size(self) -> int:
        return len(self.sizes) * self.crops_per_image


class RandomCrops(TensorBatches):
    """Training regions zero-padded into one tensor [N, 3, H_max, W_max]; crop ids from CropSampler."""

    def __init__(self, regions: list[torch.Tensor], crop: int):
        sizes = torch.tensor([r.shape[-2:] for r in regions])
        padded = torch.zeros(len(regions), 3, int(sizes[:, 0].max()), int(sizes[:, 1].max()))
        for i, r in enumerate(regions):
            padded[i, :, : r.shape[1], : r.shape[2]] = r
        super().__init__(images=padded, sizes=sizes)
        self.images, self.sizes, self.crop = padded, sizes, crop

    def __getitems__(self, crop_ids: Sequence[int]) -> dict[str, torch.Tensor]:
        ids = torch.as_tensor(crop_ids, dtype=torch.long)
        h_max, w_max = self.images.shape[-2:]
        flip, rest = ids % 2, ids // 2
        left, rest = rest % w_max, rest // w_max
        top, image = rest % h_max, rest // h_max
        rows = (top[:, None] + torch.arange(self.crop))[:, None, :, None]
        cols = (left[:, None] + torch.arange(self.crop))[:, None, None, :]
        cols = torch.where(flip.bool()[:, None, None, None], cols.flip(-1), cols)
        channels = torch.arange(3)[None, :, None, None]
        return {"image": self.images[image[:, None, None, None], channels, rows, cols]}


def grid_crops(image: torch.Tensor, crop: int) -> list[torch.Tensor]:
    """Non-overlapping crops on a fixed grid (top-left aligned) that fit inside [3, H, W]."""
    return [image[:, t:t + crop, l:l + crop] for t in range(0, image.shape[1] - crop + 1, crop)
            for l in range(0, image.shape[2] - crop + 1, crop)]  # noqa: E741


class ImageDataModule(InMemoryDataModule):
    def __init__(self, source, adapter: BatchAdapter | None = None, crop: int = 128, holdout: float = 0.25,
                 crops_per_image: int = 64, batch_size: int = 16, eval_batch_size: int = 32, seed: int = 0,
                 num_workers: int = 0):
        super().__init__(adapter or ImageAdapter(), batch_size, eval_batch_size, (0.8, 0.1, 0.1), seed, num_workers)
        if not 0 < holdout < 1:
            raise ValueError(f"data.holdout must be a fraction in (0, 1), got {holdout}")
        self.source, self.crop, self.holdout, self.crops_per_image = source, crop, holdout, crops_per_image

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        regions, evaluation = [], []
        for image, origin in self.source.load():
            # columns from `cut` on are held out: the holdout fraction, and at least one crop wide
            cut = min(int(round(image.shape[2] * (1 - self.holdout))), image.shape[2] - self.crop)
            train, held = image[:, :, :cut], image[:, :, cut:]
            if min(train.shape[1:]) < self.crop or min(held.shape[1:]) < self.crop:
                log.warning("%s: %s is too small for %d-pixel training and held-out crops; skipped",
                            origin, tuple(image.shape[1:]), self.crop)
                continue
            regions.append(train)
            evaluation += grid_crops(held, self.crop)
        if not regions:
            raise ValueError(f"no image is large enough for {self.crop}-pixel crops (a training part and a held-out "
                             f"part of at least one crop each); lower data.crop")
        self.splits = {
            "train": RandomCrops(regions, self.crop),
            "val": TensorBatches(image=torch.stack(evaluation[0::2])),
            "test": TensorBatches(image=torch.stack(evaluation[1::2] or evaluation[0::2])),
        }

    @property
    def metadata(self) -> DataMetadata:
        """RGB in [0, 1] (grey images repeated, alpha dropped; float images min–max scaled)."""
        return DataMetadata(kind=self.adapter.kind, normalization="unit_range", variables=["red", "green", "blue"])

    def make_train_sampler(self) -> CropSampler:
        train = self.splits["train"]
        return CropSampler(train.sizes, self.crop, self.crops_per_image, self.seed)
