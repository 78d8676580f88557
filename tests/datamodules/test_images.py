import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.images import BundledImages, CropSampler, ImageDataModule, ImageFolder, to_chw01


def test_bundled_images_load_as_rgb_in_unit_range():
    images = BundledImages(["astronaut", "brick"]).load()
    assert [name for _, name in images] == ["astronaut", "brick"]
    for image, _ in images:
        assert image.shape[0] == 3 and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    with pytest.raises(ValueError, match="no bundled image 'nope'"):
        BundledImages(["nope"]).load()


def test_crops_are_random_per_epoch_flipped_and_evaluation_is_held_out():
    dm = ImageDataModule(BundledImages(["astronaut", "coffee"]), crop=64, crops_per_image=8, batch_size=4)
    dm.setup()
    images = [image for image, _ in BundledImages(["astronaut", "coffee"]).load()]
    train = dm.splits["train"]
    assert train.sizes.tolist() == [[512, 384], [400, 450]]  # left 75 % of each image
    val = dm.splits["val"].__getitems__(range(len(dm.splits["val"])))["image"]
    assert val.shape[1:] == (3, 64, 64)
    assert torch.equal(val[0], images[0][:, 0:64, 384:448])  # the first held-out grid crop
    sampler = dm.make_train_sampler()
    first = list(sampler)
    assert len(first) == 16 and first == list(dm.make_train_sampler())
    sampler.set_epoch(1)
    assert list(sampler) != first
    batch = train.__getitems__(first[:4])["image"]
    h_max, w_max = 512, 450
    for crop_id, crop in zip(first[:4], batch, strict=True):
        flip, rest = crop_id % 2, crop_id // 2
        left, rest = rest % w_max, rest // w_max
        top, image = rest % h_max, rest // h_max
        assert left + 64 <= train.sizes[image, 1]  # inside the training columns
        expected = images[image][:, top : top + 64, left : left + 64]
        assert torch.equal(crop, expected.flip(-1) if flip else expected)


def test_crop_sampler_stays_inside_each_region():
    sizes = torch.tensor([[70, 100], [64, 64]])
    sampler = CropSampler(sizes, 64, 50, seed=0)
    w_max, h_max = 100, 70
    for crop_id in sampler:
        rest = crop_id // 2
        left, rest = rest % w_max, rest // w_max
        top, image = rest % h_max, rest // h_max
        assert top + 64 <= sizes[image, 0] and left + 64 <= sizes[image, 1]


def test_user_folder_png_16bit_tiff_and_errors(tmp_path):
    Image.fromarray((np.random.default_rng(0).random((100, 200, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray((np.arange(100 * 200).reshape(100, 200) % 65535).astype(np.uint16)).save(tmp_path / "b.tif")
    images = ImageFolder(str(tmp_path)).load()
    assert [img.shape for img, _ in images] == [(3, 100, 200)] * 2
    assert float(images[1][0].max()) <= 1.0
    dm = ImageDataModule(ImageFolder(str(tmp_path)), crop=32, batch_size=2)
    dm.setup()
    assert next(iter(dm.train_dataloader()))["image"].shape == (2, 3, 32, 32)
    (tmp_path / "c.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"c\.jpg: not a readable image"):
        ImageFolder(str(tmp_path)).load()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolder("/nowhere").load()
    with pytest.raises(ValueError, match="too small|large enough"):
        ImageDataModule(ImageFolder(str(tmp_path / "a.png")), crop=128).setup()


def test_float_images_are_scaled_and_nan_is_named():
    assert float(to_chw01(np.array([[2.0, 4.0]]), "x").max()) == 1.0
    with pytest.raises(ValueError, match="f.fits: image holds NaN"):
        to_chw01(np.array([[np.nan, 1.0]]), "f.fits")


def test_a_folder_is_read_lazily_and_equals_the_decoded_images(tmp_path):
    rng = np.random.default_rng(0)
    pixels = [(rng.random((96, 160, 3)) * 255).astype(np.uint8) for _ in range(3)]
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / f"im{i}.png")
    dm = ImageDataModule(ImageFolder(str(tmp_path)), crop=32, crops_per_image=4, batch_size=4, num_workers=0)
    dm.setup()
    train = dm.splits["train"]
    assert all(ref.image is None for ref in train.refs)  # setup read the headers only
    images = [to_chw01(p, "x") for p in pixels]
    ids = list(dm.make_train_sampler())
    batch = train.__getitems__(ids)["image"]
    for crop_id, crop in zip(ids, batch, strict=True):
        flip, rest = crop_id % 2, crop_id // 2
        left, rest = rest % train.w_max, rest // train.w_max
        top, image = rest % train.h_max, rest // train.h_max
        expected = images[image][:, top : top + 32, left : left + 32]
        assert torch.equal(crop, expected.flip(-1) if flip else expected)
    assert len(train._open_cache) <= train.cache_images
    # a file cut short after setup: the batch that reads it names it
    (tmp_path / "im1.png").write_bytes((tmp_path / "im1.png").read_bytes()[:500])
    fresh = ImageDataModule(ImageFolder(str(tmp_path)), crop=32, batch_size=4)
    fresh.setup()
    with pytest.raises(ValueError, match=r"im1\.png: not a readable image .* truncated or corrupt"):
        list(fresh.val_dataloader())
