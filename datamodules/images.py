"""LightningDataModule for images: random training crops (with horizontal flips), fixed evaluation crops.

Batch: {"image": float32 [B, 3, crop, crop] in [0, 1]}.
Each image is split by columns: crops for training come from its left part, validation and test crops
from the right `holdout` fraction (at least one crop wide; alternating, on a fixed grid), so no
evaluation pixel is trained on.

Users' images are read lazily: setup reads each file's header (its size), and a batch decodes the images its crops
come from (the last few decoded ones are kept per process), so a folder of any size costs the memory of a few
images. The bundled images are small and live in memory.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.adapters import BatchAdapter, ImageAdapter
from datamodules.common import EpochSampler, SplitDataModule, find_files
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

    def open(self) -> list[ImageRef]:
        """Nine small images: in memory."""
        return [ImageRef(origin, tuple(image.shape[1:]), image) for image, origin in self.load()]


class ImageFolder:
    """Your images: PNG, JPEG, TIFF (and FITS when astropy is installed), one file or a folder (recursive)."""

    extensions = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".fits", ".fit")

    def __init__(self, path: str | None = None):
        self.path = path

    def load(self) -> list[tuple[torch.Tensor, str]]:
        return [(ref.read(), ref.origin) for ref in self.open()]

    def open(self) -> list[ImageRef]:
        """Every image's size from its header; the pixels are decoded when a crop needs them."""
        return [ImageRef(str(f), image_size(f)) for f in find_files(self.path, self.extensions, "ImageFolder")]


class ImageRef:
    """One image: where it comes from, its (H, W), and its pixels (given, or decoded from the file on read)."""

    def __init__(self, origin: str, size: tuple[int, int], image: torch.Tensor | None = None):
        self.origin, self.size, self.image = origin, (int(size[0]), int(size[1])), image

    def read(self) -> torch.Tensor:
        """float32 [3, H, W] in [0, 1]."""
        if self.image is not None:
            return self.image
        image = to_chw01(read_image(Path(self.origin)), self.origin)
        if tuple(image.shape[1:]) != self.size:
            raise ValueError(
                f"{self.origin}: decoded {tuple(image.shape[1:])}, but its header said {self.size}: "
                f"the file changed while the run was reading it"
            )
        return image


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file's header, without decoding the pixels."""
    if path.suffix.lower() in (".fits", ".fit"):
        try:
            from astropy.io import fits
        except ImportError:
            raise ModuleNotFoundError(f"{path}: reading FITS needs astropy: pip install astropy") from None
        try:
            header = fits.getheader(path)
            return int(header["NAXIS2"]), int(header["NAXIS1"])
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a readable FITS image ({e})") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None


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
        raise ValueError(f"{path}: not a readable image ({e}); truncated or corrupt") from None


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


class ImageCrops(Dataset):
    """Crops of images read when a batch asks for them: the last `cache_images` decoded images are kept per
    process (evaluation crops come image by image, training crops of one image often share a batch)."""

    def __init__(self, refs: list[ImageRef], crop: int, cache_images: int = 8):
        self.refs, self.crop, self.cache_images = refs, crop, cache_images

    def image(self, i: int) -> torch.Tensor:
        cache = self.__dict__.setdefault("_open_cache", OrderedDict())
        if i in cache:
            cache.move_to_end(i)
        else:
            cache[i] = self.refs[i].read()
            while len(cache) > self.cache_images:
                cache.popitem(last=False)
        return cache[i]

    def crops(self, image: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        """[n, 3, crop, crop] (top[k], left[k]) crops of images image[k], read in image order."""
        out = torch.empty(len(image), 3, self.crop, self.crop)
        for k in torch.argsort(image, stable=True).tolist():
            t, l = int(top[k]), int(left[k])  # noqa: E741
            out[k] = self.image(int(image[k]))[:, t : t + self.crop, l : l + self.crop]
        return out

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_open_cache"}


class RandomCrops(ImageCrops):
    """Training crops: ids from CropSampler address (region, top, left, flip); region i is image i's columns
    [0, sizes[i, 1]), so a crop's coordinates are those of its image."""

    def __init__(self, refs: list[ImageRef], sizes: torch.Tensor, crop: int, cache_images: int = 8):
        super().__init__(refs, crop, cache_images)
        self.sizes = sizes  # [N, 2] (h, w) of each training region
        self.h_max, self.w_max = int(sizes[:, 0].max()), int(sizes[:, 1].max())

    def __len__(self) -> int:
        return len(self.refs)

    def __getitems__(self, crop_ids: Sequence[int]) -> dict[str, torch.Tensor]:
        ids = torch.as_tensor(crop_ids, dtype=torch.long)
        flip, rest = ids % 2, ids // 2
        left, rest = rest % self.w_max, rest // self.w_max
        top, image = rest % self.h_max, rest // self.h_max
        crops = self.crops(image, top, left)
        return {"image": torch.where(flip.bool()[:, None, None, None], crops.flip(-1), crops)}


class GridCrops(ImageCrops):
    """Evaluation crops at fixed places: rows of `places` are (image, top, left)."""

    def __init__(self, refs: list[ImageRef], places: torch.Tensor, crop: int, cache_images: int = 8):
        super().__init__(refs, crop, cache_images)
        self.places = places

    def __len__(self) -> int:
        return len(self.places)

    def __getitems__(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        p = self.places[torch.as_tensor(idx, dtype=torch.long)]
        return {"image": self.crops(p[:, 0], p[:, 1], p[:, 2])}


def grid_places(size: tuple[int, int], first_col: int, crop: int) -> list[tuple[int, int]]:
    """(top, left) of the non-overlapping crops on a fixed grid that fit in columns [first_col, W) of an image."""
    h, w = size
    return [(t, first_col + l) for t in range(0, h - crop + 1, crop) for l in range(0, w - first_col - crop + 1, crop)]  # noqa: E741


class ImageDataModule(SplitDataModule):
    def __init__(
        self,
        source,
        adapter: BatchAdapter | None = None,
        crop: int = 128,
        holdout: float = 0.25,
        crops_per_image: int = 64,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__(adapter or ImageAdapter(), batch_size, eval_batch_size, (0.8, 0.1, 0.1), seed, num_workers)
        if not 0 < holdout < 1:
            raise ValueError(f"data.holdout must be a fraction in (0, 1), got {holdout}")
        self.source, self.crop, self.holdout, self.crops_per_image = source, crop, holdout, crops_per_image

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        refs, sizes, evaluation = [], [], []
        for ref in self.source.open():
            h, w = ref.size
            # columns from `cut` on are held out: the holdout fraction, and at least one crop wide
            cut = min(int(round(w * (1 - self.holdout))), w - self.crop)
            if min(h, cut) < self.crop or min(h, w - cut) < self.crop:
                log.warning(
                    "%s: %s is too small for %d-pixel training and held-out crops; skipped",
                    ref.origin,
                    (h, w),
                    self.crop,
                )
                continue
            evaluation += [(len(refs), t, l) for t, l in grid_places(ref.size, cut, self.crop)]  # noqa: E741
            refs.append(ref)
            sizes.append((h, cut))
        if not refs:
            raise ValueError(
                f"no image is large enough for {self.crop}-pixel crops (a training part and a held-out "
                f"part of at least one crop each); lower data.crop"
            )
        places = torch.tensor(evaluation)
        self.splits = {
            "train": RandomCrops(refs, torch.tensor(sizes), self.crop),
            "val": GridCrops(refs, places[0::2], self.crop),
            "test": GridCrops(refs, places[1::2] if len(places) > 1 else places[0::2], self.crop),
        }

    @property
    def metadata(self) -> DataMetadata:
        """RGB in [0, 1] (grey images repeated, alpha dropped; float images min–max scaled)."""
        return DataMetadata(kind=self.adapter.kind, normalization="unit_range", variables=["red", "green", "blue"])

    def make_train_sampler(self) -> CropSampler:
        train = self.splits["train"]
        return CropSampler(train.sizes, self.crop, self.crops_per_image, self.seed)

    # ---- for encode.py: a split's samples, what each row is, and what they depend on ------------------------------
    def use_statistics(self, metadata: DataMetadata) -> None:
        """Images are scaled to [0, 1] on their own: nothing to take from the tokenizer."""

    def encode_set(self, split: str) -> tuple[GridCrops, np.ndarray, dict]:
        """(the split's crops on a fixed grid: validation and test as evaluated, train the non-overlapping crops of
        each image's training columns; index [N] of (image, top, left) per row; the images and the crop)."""
        crops = self.splits[split]
        if isinstance(crops, RandomCrops):
            places = [
                (i, top, left)
                for i, (h, cut) in enumerate(crops.sizes.tolist())
                for top, left in grid_places((h, cut), 0, self.crop)
            ]
            crops = GridCrops(crops.refs, torch.tensor(places), self.crop)
        index = np.empty(len(crops.places), [("image", "i4"), ("top", "i4"), ("left", "i4")])
        index["image"], index["top"], index["left"] = crops.places.numpy().T
        about = {"images": [[r.origin, list(r.size)] for r in crops.refs], "crop": self.crop, "holdout": self.holdout}
        return crops, index, about
