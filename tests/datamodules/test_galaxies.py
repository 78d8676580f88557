"""Galaxy data: the embedded set (real kcorrect catalog rows, GalSim images, spectra), users' parquet tables and FITS
cutouts, and the errors for bad data."""

import numpy as np
import pytest
import torch

from datamodules.galaxies import EmbeddedGalaxies, GalaxyDataModule, GalaxyFits, GalaxyParquet, folder_written_once
from datamodules.galaxy_sim import CATALOG_COLUMNS, read_sdss_catalog
from tokenizers.astro import robust_arcsinh


@pytest.fixture(scope="module")
def embedded(data_dir):
    source = EmbeddedGalaxies(n_objects=128, spectrum_pixels=128)  # the tests' small set (tests/helpers.py)
    return source, source.load(data_dir)


def test_the_embedded_set_is_the_real_catalog_rendered(embedded, data_dir):
    source, table = embedded
    cat = read_sdss_catalog()
    assert table.image.shape == (128, 6, 64, 64) and table.bands == ["u", "g", "r", "i", "z", "y"]
    assert table.catalog_columns == list(CATALOG_COLUMNS)
    np.testing.assert_allclose(table.catalog[:, 0], cat["Z"][:128], rtol=1e-6)  # the catalog's redshifts
    r_mag = 22.5 - 2.5 * np.log10(cat["MODELFLUX"][:128, 2])
    np.testing.assert_allclose(table.catalog[:, 3], r_mag, rtol=1e-5)
    # the catalog's missing values stay missing: 2MASS stores 0, GALEX −99
    assert np.array_equal(np.isnan(table.catalog[:, 6]), cat["J_M_EXT"][:128] <= 0)
    assert np.array_equal(np.isnan(table.catalog[:, 9]), cat["NUV_FLUX_AUTO"][:128] <= -99)
    # r-band image flux (sum over the cutout) follows the catalog's r flux: brighter galaxies are brighter
    total = np.asarray(table.image[:, 2]).sum((1, 2))
    assert np.corrcoef(np.log(total.clip(1e-3)), np.log(cat["MODELFLUX"][:128, 2]))[0, 1] > 0.9
    assert table.spectrum.shape == (128, 128) and np.isfinite(table.spectrum).all()
    assert (table.spectrum_ivar == 0).any()  # the 5577 Å sky line is masked
    again = source.load(data_dir)  # cached: read back, identical
    assert np.array_equal(np.asarray(again.image), np.asarray(table.image))
    assert not list(data_dir.glob(".galaxies_*tmp*"))  # no temporary folder left behind


def test_datamodule_normalizes_splits_and_weights(embedded, data_dir):
    source, table = embedded
    dm = GalaxyDataModule(source, data_dir=str(data_dir), bands=6)
    dm.setup("fit")
    batch = dm.example_batch(4)
    assert batch["image"].shape == (4, 6, 64, 64) and batch["weight"].shape == (4, 1, 64, 64)
    assert set(batch["weight"].unique().tolist()) <= {1.0, torch.tensor(0.3).item()}
    rows = torch.cat([dm.rows[s] for s in ("train", "val", "test")])
    assert sorted(rows.tolist()) == list(range(128))  # a partition of the objects
    assert dm.metadata.normalization == "robust_arcsinh" and dm.metadata.variables == table.bands
    with pytest.raises(ValueError, match="expected 5 bands"):
        GalaxyDataModule(source, data_dir=str(data_dir), bands=5).setup("fit")


def write_parquet(path, n=6, bands=3, size=16, drop=(), image_shape=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    g = np.random.default_rng(0)
    images = g.normal(size=(n, bands, size, size)).astype(np.float32) + 5
    columns = {
        "object_id": np.arange(100, 100 + n),
        "image": [im.reshape(image_shape or im.shape).tolist() for im in images],
        "a": np.full(n, 2.0),
        "b": np.full(n, 1.0),
        "theta": np.zeros(n),
        "mag_r": np.where(np.arange(n) == 0, np.nan, 18.0 + np.arange(n)),
    }
    pq.write_table(pa.table({k: v for k, v in columns.items() if k not in drop}), path)
    return images


def test_parquet_tables_load_with_their_catalog(tmp_path):
    images = write_parquet(tmp_path / "g.parquet")
    dm = GalaxyDataModule(
        GalaxyParquet(str(tmp_path / "g.parquet"), bands=["g", "r", "i"], catalog_columns=["mag_r"]),
        data_dir=str(tmp_path),
        bands=3,
    )
    dm.setup("fit")
    assert dm.table.object_id.tolist() == list(range(100, 106))
    np.testing.assert_array_equal(dm.table.image, images)
    assert np.isnan(dm.table.catalog[0, 0]) and dm.table.catalog[1, 0] == 19.0
    flat = tmp_path / "flat.parquet"
    write_parquet(flat, image_shape=(-1,))  # flat lists are reshaped to [bands, S, S]
    np.testing.assert_array_equal(GalaxyParquet(str(flat), bands=["g", "r", "i"]).load(tmp_path).image, images)


@pytest.mark.parametrize(
    ("problem", "match"),
    [
        ("column", r"missing required column\(s\) \['theta'\]"),
        ("bands", r"row 0: expected 4 bands"),
        ("nan", r"object 101 band 'r' has 1 NaN/Inf pixels"),
    ],
)
def test_bad_galaxy_tables_are_named(tmp_path, problem, match):
    path = tmp_path / "bad.parquet"
    if problem == "nan":
        import pyarrow.parquet as pq

        write_parquet(path)
        table = pq.read_table(path).to_pydict()
        table["image"][1][1][3][3] = float("nan")
        import pyarrow as pa

        pq.write_table(pa.table(table), path)
    else:
        write_parquet(path, drop=("theta",) if problem == "column" else ())
    bands = ["g", "r", "i", "z"] if problem == "bands" else ["g", "r", "i"]
    dm = GalaxyDataModule(GalaxyParquet(str(path), bands=bands), data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=match) as err:
        dm.setup("fit")
    assert str(path) in str(err.value) or problem == "nan"


def test_fits_cutouts_load_with_their_header_ellipse(tmp_path):
    from astropy.io import fits

    g = np.random.default_rng(0)
    for i in range(4):
        hdu = fits.PrimaryHDU(g.normal(size=(2, 12, 12)).astype(np.float32))
        hdu.header["OBJID"], hdu.header["A"], hdu.header["THETA"] = 7 + i, 3.0, 0.5
        hdu.writeto(tmp_path / f"c{i}.fits")
    table = GalaxyFits(str(tmp_path), bands=["g", "r"]).load(tmp_path).validate(2)
    assert table.object_id.tolist() == [7, 8, 9, 10] and table.image.shape == (4, 2, 12, 12)
    assert table.a.tolist() == [3.0] * 4 and table.b.tolist() == [1.5] * 4 and table.x0[0] == 5.5
    with pytest.raises(ValueError, match=r"expected a \[3, S, S\] cutout"):
        GalaxyFits(str(tmp_path), bands=["g", "r", "i"]).load(tmp_path)


def test_users_cutouts_are_converted_once_and_read_memory_mapped(tmp_path, monkeypatch):
    from astropy.io import fits

    folder = tmp_path / "cutouts"
    folder.mkdir()
    g = np.random.default_rng(0)
    pixels = [g.normal(size=(2, 12, 12)).astype(np.float32) + 3 for _ in range(5)]
    for i, p in enumerate(pixels):
        fits.PrimaryHDU(p).writeto(folder / f"c{i}.fits")
    table = GalaxyFits(str(folder), bands=["g", "r"]).load(tmp_path / "data")
    assert isinstance(table.image, np.memmap) and np.array_equal(np.asarray(table.image), np.stack(pixels))
    dm = GalaxyDataModule(GalaxyFits(str(folder), bands=["g", "r"]), data_dir=str(tmp_path / "data"), batch_size=2)
    dm.setup("fit")
    batch = dm.splits["train"].__getitems__([1, 0])  # a batch normalizes its own objects, in its order
    rows = dm.rows["train"][[1, 0]]
    expected = robust_arcsinh(torch.from_numpy(np.stack([pixels[int(r)] for r in rows])))
    assert torch.equal(batch["image"], expected) and torch.equal(batch["row"], rows)
    monkeypatch.setattr("astropy.io.fits.open", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read again")))
    assert GalaxyFits(str(folder), bands=["g", "r"]).load(tmp_path / "data").image.shape == (5, 2, 12, 12)
    monkeypatch.undo()
    fits.PrimaryHDU(g.normal(size=(2, 16, 16)).astype(np.float32)).writeto(folder / "c5.fits")  # another size
    with pytest.raises(ValueError, match=r"c5.fits: images of shape \(2, 16, 16\), but .*c0.fits has \(2, 12, 12\)"):
        GalaxyFits(str(folder), bands=["g", "r"]).load(tmp_path / "data")


def test_a_folder_another_process_completed_first_is_kept(tmp_path):
    theirs = tmp_path / "galaxies_x"
    theirs.mkdir()
    (theirs / "meta.json").write_text("theirs")
    with folder_written_once(theirs, "meta.json") as tmp:
        (tmp / "meta.json").write_text("ours")
    assert (theirs / "meta.json").read_text() == "theirs" and [p.name for p in tmp_path.iterdir()] == ["galaxies_x"]
    (theirs / "meta.json").unlink()
    (theirs / "half.npy").write_text("")  # not complete: not theirs to keep
    with pytest.raises(OSError), folder_written_once(theirs, "meta.json") as tmp:
        (tmp / "meta.json").write_text("ours")
    assert [p.name for p in tmp_path.iterdir()] == ["galaxies_x"]
