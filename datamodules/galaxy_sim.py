"""The embedded galaxy set: the 10,000 real SDSS galaxies that ship in the `kcorrect` wheel, each given a
multi-band image (GalSim) and a spectrum, both from one spectral energy distribution fitted to its photometry.

Per galaxy (row i of kcorrect's data/test/gst_tests_small.fits):
1. SED: kcorrect's NMF templates fitted to the SDSS ugriz model fluxes at the spectroscopic redshift Z
   (KcorrectSDSS.fit_coeffs), shifted to the observed frame.
2. Band fluxes: that SED through GalSim's LSST bandpasses (AB, nanomaggies), scaled so that its SDSS r flux
   equals the catalog's.
3. Image [bands, S, S] in nanomaggies per pixel (0.2"/pixel): a de Vaucouleurs bulge + exponential disk
   (bulge fraction from the g − r colour, redder towards longer wavelengths; disk size from the r luminosity
   and the angular-diameter distance at Z; random axis ratios, angle and sub-pixel offset), convolved with a
   Moffat PSF whose FWHM shrinks with wavelength (∝ λ^−0.2), plus Gaussian sky noise at the LSST single-visit
   5σ depths.
4. Spectrum on a log-spaced grid (3800–9200 Å): the observed SED in 1e-17 erg/s/cm²/Å, convolved with a
   Gaussian line-spread function, with noise (sky floor, noisier at the blue end) and the 5577 Å sky line
   masked (ivar = 0).
5. Catalog scalars: Z, ugriz AB magnitudes, 2MASS J/H/K, GALEX NUV/FUV fluxes, with the catalog's missing
   values (0 for 2MASS, −99 for GALEX, non-positive fluxes) as NaN.
6. Ellipse-mask parameters: centre (x0, y0) in pixels, semi-axes a, b (the disk's exponential scale length
   along its major/minor axis, pixels) and angle θ (radians, counter-clockwise from +x).

Everything depends only on (seed, object index), so the set is the same for any number of worker processes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

LSST_BANDS = ("u", "g", "r", "i", "z", "y")
LSST_M5 = {"u": 23.9, "g": 25.0, "r": 24.7, "i": 24.0, "z": 23.3, "y": 22.1}  # single-visit 5σ point-source depth
SDSS_BANDS = ("u", "g", "r", "i", "z")
NMGY_CGS = 3.631e-29  # 1 nanomaggy in erg/s/cm²/Hz
C_ANGSTROM = 2.99792458e18  # c in Å/s
CATALOG_COLUMNS = (
    "redshift",
    "mag_u",
    "mag_g",
    "mag_r",
    "mag_i",
    "mag_z",
    "mag_j",
    "mag_h",
    "mag_k",
    "flux_nuv",
    "flux_fuv",
)


def catalog_path() -> Path:
    import kcorrect

    return Path(kcorrect.KCORRECT_DIR) / "data" / "test" / "gst_tests_small.fits"


def read_sdss_catalog() -> dict[str, np.ndarray]:
    """kcorrect's 10,000 SDSS galaxies as plain arrays (FITS big-endian columns converted)."""
    from astropy.io import fits

    rows = fits.getdata(catalog_path(), 1)
    return {name: np.asarray(rows[name]).astype(np.float64) for name in rows.columns.names}


def catalog_scalars(cat: dict[str, np.ndarray]) -> np.ndarray:
    """[N, len(CATALOG_COLUMNS)] float32, missing values as NaN."""
    flux = cat["MODELFLUX"]
    with np.errstate(divide="ignore", invalid="ignore"):
        mags = np.where(flux > 0, 22.5 - 2.5 * np.log10(np.where(flux > 0, flux, 1)), np.nan)
    cols = [cat["Z"], *mags.T]
    for band in "JHK":
        v = cat[f"{band}_M_EXT"]
        cols.append(np.where(v > 0, v, np.nan))
    for band in ("NUV", "FUV"):
        v = cat[f"{band}_FLUX_AUTO"]
        cols.append(np.where(v > -99, v, np.nan))
    return np.stack(cols, 1).astype(np.float32)


def _band_fnu(wave: np.ndarray, flam: np.ndarray, band_wave: np.ndarray, throughput: np.ndarray) -> np.ndarray:
    """Mean f_ν through a band of an SED f_λ(wave) [..., L]: ∫ f_λ λ T dλ / (c ∫ T/λ dλ)."""
    t = np.interp(wave, band_wave, throughput, left=0.0, right=0.0)
    return np.trapezoid(flam * wave * t, wave, axis=-1) / (C_ANGSTROM * np.trapezoid(t / wave, wave))


def _bandpass(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(wavelength Å, throughput) of an LSST band from GalSim's share dir, or an SDSS band from kcorrect's."""
    if name.startswith("sdss_"):
        import kcorrect

        path = Path(kcorrect.KCORRECT_DIR) / "data" / "responses" / f"{name}.dat"
        cells = [
            [c.strip() for c in line.strip().strip("|").split("|")]
            for line in path.read_text().splitlines()
            if line.lstrip().startswith("|")
        ]
        column = cells[0].index("pass")  # throughput at airmass 1.3, as in the SDSS catalog
        table = np.array([[float(r[0]), float(r[column])] for r in cells[1:]])
        return table[:, 0], table[:, 1].clip(0)
    import galsim

    table = np.loadtxt(Path(galsim.meta_data.share_dir) / "bandpasses" / f"LSST_{name}.dat")
    return table[:, 0] * 10.0, table[:, 1]  # nm -> Å


def fit_seds(cat: dict[str, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """kcorrect NMF fit of the ugriz fluxes: (rest-frame wavelength Å [L], rest-frame SED shape [n, L])."""
    import kcorrect.kcorrect

    kc = kcorrect.kcorrect.KcorrectSDSS(abcorrect=False, redshift_range=[0.0, 0.7], nredshift=200)
    maggies = cat["MODELFLUX"][rows] * 1e-9
    ivar = cat["MODELFLUX_IVAR"][rows] * 1e18
    ivar = np.where(np.isfinite(ivar) & (maggies > 0), ivar, 0.0)
    coeffs = kc.fit_coeffs(
        redshift=cat["Z"][rows].astype(np.float32), maggies=maggies.astype(np.float32), ivar=ivar.astype(np.float32)
    )
    wave = np.asarray(kc.templates.wave, np.float64)
    keep = (wave > 900) & (wave < 30000)
    return wave[keep], coeffs.astype(np.float64) @ np.asarray(kc.templates.flux, np.float64)[:, keep]


def observed(
    rest_wave: np.ndarray, rest_sed: np.ndarray, z: np.ndarray, r_nmgy: np.ndarray, grid: np.ndarray
) -> np.ndarray:
    """Observed-frame f_λ on `grid` [G] in erg/s/cm²/Å, [n, G], scaled to the catalog's SDSS r flux."""
    r_wave, r_t = _bandpass("sdss_r0")
    out = np.empty((len(z), len(grid)))
    for i in range(len(z)):
        flam = np.interp(grid, rest_wave * (1 + z[i]), rest_sed[i] / (1 + z[i]))
        r_model = _band_fnu(grid, flam, r_wave, r_t)
        out[i] = flam * (max(r_nmgy[i], 1e-3) * NMGY_CGS / max(r_model, 1e-300))
    return out


def gaussian_blur_1d(x: np.ndarray, sigma_pixels: float) -> np.ndarray:
    """Convolve the last axis with a normalized Gaussian (edges reflected)."""
    half = max(1, int(math.ceil(4 * sigma_pixels)))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma_pixels) ** 2)
    k /= k.sum()
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(half, half)], mode="reflect")
    return np.apply_along_axis(lambda row: np.convolve(row, k, mode="valid"), -1, padded)


def render_images(
    params: dict[str, np.ndarray], size: int, pixel_scale: float, bands: tuple[str, ...], rows: range
) -> np.ndarray:
    """GalSim images [len(rows), bands, size, size] in nanomaggies per pixel, noise-free."""
    import galsim

    out = np.empty((len(rows), len(bands), size, size), np.float32)
    for j, i in enumerate(rows):
        q_beta = params["theta"][i] * galsim.radians
        disk = galsim.Exponential(half_light_radius=params["disk_hlr"][i]).shear(q=params["disk_q"][i], beta=q_beta)
        bulge = galsim.DeVaucouleurs(half_light_radius=params["bulge_hlr"][i]).shear(
            q=params["bulge_q"][i], beta=q_beta
        )
        for b in range(len(bands)):
            flux, bt = params["flux"][i, b], params["bulge_fraction"][i, b]
            psf = galsim.Moffat(beta=3.5, fwhm=params["psf_fwhm"][b])
            galaxy = galsim.Convolve(bulge.withFlux(flux * bt) + disk.withFlux(flux * (1 - bt)), psf)
            image = galaxy.drawImage(nx=size, ny=size, scale=pixel_scale, offset=tuple(params["offset"][i]))
            out[j, b] = image.array
    return out


def _render_chunk(args) -> np.ndarray:
    return render_images(*args)


def simulate(
    n_objects: int | None,
    size: int,
    bands: tuple[str, ...],
    pixel_scale: float,
    spectrum_pixels: int,
    lsf_sigma: float,
    seed: int,
    workers: int,
) -> dict[str, np.ndarray]:
    """The whole embedded set as arrays (see the module docstring); rows are the first n_objects catalog rows."""
    from astropy.cosmology import Planck18

    cat = read_sdss_catalog()
    n = len(cat["Z"]) if n_objects is None else min(n_objects, len(cat["Z"]))
    unknown = sorted(set(bands) - set(LSST_BANDS))
    if unknown:
        raise ValueError(f"data.source.bands: unknown LSST bands {unknown}; choose from {list(LSST_BANDS)}")
    rows = np.arange(n)
    z = cat["Z"][rows]
    rest_wave, rest_sed = fit_seds(cat, rows)
    # band fluxes: one fine observed-frame grid covers every LSST band
    fine = np.geomspace(3000, 11000, 4000)
    flam_fine = observed(rest_wave, rest_sed, z, cat["MODELFLUX"][rows, 2], fine)
    eff = {}
    flux = np.empty((n, len(bands)))
    for b, band in enumerate(bands):
        bw, bt = _bandpass(band)
        flux[:, b] = _band_fnu(fine, flam_fine, bw, bt) / NMGY_CGS
        eff[band] = float(np.trapezoid(bw * bt, bw) / np.trapezoid(bt, bw))
    flux = np.clip(flux, 0, None)

    rng = np.random.default_rng([seed, 1])  # object parameters: one draw per object, in row order
    g_r = np.nan_to_num(
        -2.5
        * np.log10(np.clip(cat["MODELFLUX"][rows, 1], 1e-3, None) / np.clip(cat["MODELFLUX"][rows, 2], 1e-3, None)),
        nan=0.7,
    )
    bt_r = np.clip(0.15 + 1.0 * (g_r - 0.55), 0.05, 0.8)
    lam_r = eff.get("r", 6200.0)
    bulge_fraction = np.clip(bt_r[:, None] * (np.array([eff[b] for b in bands])[None] / lam_r) ** 0.6, 0.02, 0.95)
    d_a_kpc = Planck18.angular_diameter_distance(np.clip(z, 1e-3, None)).to("kpc").value
    lum_r = (
        cat["MODELFLUX"][rows, 2].clip(1e-3) * (Planck18.luminosity_distance(np.clip(z, 1e-3, None)).value / 100.0) ** 2
    )
    disk_kpc = 3.0 * (lum_r / np.median(lum_r)) ** 0.3 * rng.lognormal(0.0, 0.3, n)
    disk_hlr = np.clip(disk_kpc / d_a_kpc * 206265.0, 2 * pixel_scale, size * pixel_scale / 5)
    params = {
        "flux": flux,
        "bulge_fraction": bulge_fraction,
        "disk_hlr": disk_hlr,
        "bulge_hlr": np.clip(0.35 * disk_hlr, pixel_scale, None),
        "disk_q": rng.uniform(0.25, 1.0, n),
        "bulge_q": rng.uniform(0.6, 1.0, n),
        "theta": rng.uniform(0, math.pi, n),
        "offset": rng.normal(0, 0.5, (n, 2)),
        "psf_fwhm": np.array([0.7 * (eff[b] / lam_r) ** -0.2 for b in bands]),
    }
    chunks = [range(s, min(n, s + 256)) for s in range(0, n, 256)]
    jobs = [(params, size, pixel_scale, tuple(bands), c) for c in chunks]
    if workers > 1 and len(chunks) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            images = np.concatenate(list(pool.map(_render_chunk, jobs)))
    else:
        images = np.concatenate([_render_chunk(j) for j in jobs])
    sky = np.array(
        [
            10 ** ((22.5 - LSST_M5[b]) / 2.5) / (5 * math.sqrt(2.27) * params["psf_fwhm"][k] / pixel_scale)
            for k, b in enumerate(bands)
        ],
        np.float32,
    )  # σ per pixel: 5σ point source over its PSF area
    noise_rng = np.random.default_rng([seed, 2])
    images += noise_rng.standard_normal(images.shape, dtype=np.float32) * sky[None, :, None, None]

    # spectra: fine grid -> LSF -> output grid; noise
    wave = np.geomspace(3800.0, 9200.0, spectrum_pixels)
    step = math.log(wave[1] / wave[0])
    fine_spec = np.exp(np.arange(math.log(3700.0), math.log(9300.0), step / 4))
    flam = observed(rest_wave, rest_sed, z, cat["MODELFLUX"][rows, 2], fine_spec) * 1e17
    flam = gaussian_blur_1d(flam, 4 * lsf_sigma)
    spec = np.stack([np.interp(wave, fine_spec, f) for f in flam])
    sigma = 2.0 * (1 + 2 * np.exp(-(wave - 3800) / 400))[None, :] * np.ones((n, 1))
    spec_rng = np.random.default_rng([seed, 3])
    spec = spec + spec_rng.standard_normal(spec.shape) * sigma
    ivar = 1 / sigma**2
    sky_line = np.abs(wave - 5577.0) < 6.0
    ivar[:, sky_line], spec[:, sky_line] = 0.0, 0.0

    phi = params["theta"]
    scale_length = disk_hlr / 1.678 / pixel_scale
    return {
        "object_id": rows.astype(np.int64),  # the row of kcorrect's catalog
        "image": images.astype(np.float32),
        "x0": (size / 2 - 0.5 + params["offset"][:, 0]).astype(np.float32),
        "y0": (size / 2 - 0.5 + params["offset"][:, 1]).astype(np.float32),
        "a": scale_length.astype(np.float32),
        "b": (scale_length * params["disk_q"]).astype(np.float32),
        "theta": phi.astype(np.float32),
        "catalog": catalog_scalars({k: v[rows] for k, v in cat.items()}),
        "wave": wave.astype(np.float32),
        "spectrum": spec.astype(np.float32),
        "spectrum_ivar": ivar.astype(np.float32),
    }


def default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
