"""Validation panels (lit_modules/panels.py): fields in a colour map people read, EEG as traces, images as images.
Assertions are on the figure's artists and on pixels far from any text, never on how a font renders."""

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.lines import Line2D

from lit_modules.panels import (
    DPI,
    ERROR_CMAP,
    SIGNED_CMAP,
    UNSIGNED_CMAP,
    field_figure,
    field_scale,
    reconstruction_panels,
    render,
    signal_figure,
)


def bands(width: int = 64) -> torch.Tensor:
    """[1, 1, W, W]: three vertical bands of value −1, 0 and +2 (a signed field whose range is not symmetric)."""
    x = torch.zeros(1, 1, width, width)
    x[..., : width // 3] = -1.0
    x[..., 2 * width // 3 :] = 2.0
    return x


def drawn(fig) -> np.ndarray:
    """The figure's RGB pixels [H, W, 3] in [0, 1], leaving its artists in place (render clears them)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3] / 255.0


def pixel_at(rgb: np.ndarray, ax, col: float, row: float) -> np.ndarray:
    """The colour drawn at data point (col, row) of an image axes (display y counts from the bottom)."""
    x, y = ax.transData.transform((col, row))
    return rgb[rgb.shape[0] - 1 - int(round(y)), int(round(x))]


def image_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.images]  # the colour bars draw no image


def test_every_field_tile_is_at_least_two_inches_wide_and_high():
    x = torch.randn(4, 1, 64, 64)
    fig = field_figure(x, x + 0.1, ["a/u", "a/v", "b/h", "b/u"])
    drawn(fig)
    tiles = image_axes(fig)
    assert len(tiles) == 4 * 3  # input | reconstruction | error per sample
    for ax in tiles:
        box = ax.get_window_extent()
        assert min(box.width, box.height) >= 2 * DPI, box  # a 64² field gets ≥ 3 screen pixels per value


def test_render_gives_the_figure_as_rgb_pixels():
    x = torch.randn(2, 1, 16, 16)
    fig = field_figure(x, x, ["a/u", "a/v"])
    width, height = fig.get_size_inches() * DPI
    image = render(fig)
    assert image.dtype == np.uint8 and image.shape == (round(height), round(width), 3)


def test_a_signed_field_is_drawn_in_a_diverging_map_whose_centre_colour_is_zero():
    x = bands()
    fig = field_figure(x, x, ["pde/u"])
    rgb = drawn(fig)
    field, recon, _ = image_axes(fig)
    for ax in (field, recon):
        image = ax.images[0]
        assert image.cmap.name == SIGNED_CMAP
        assert image.norm.vmin == -image.norm.vmax == -2.0  # symmetric: 0 sits at the middle of the map
    cmap = colormaps[SIGNED_CMAP]
    for value, col in ((0.0, 32), (2.0, 60), (-1.0, 4)):  # the middle of each band, far from its edges
        expected = np.array(cmap(0.5 + value / 4)[:3])
        assert np.abs(pixel_at(rgb, field, col, 32) - expected).max() <= 2 / 255, value


def test_a_field_of_one_sign_gets_a_sequential_map_over_its_range():
    assert field_scale(np.array([0.5, 1.0, 3.0])) == (UNSIGNED_CMAP, 0.5, 3.0)
    assert field_scale(np.array([0.0, 2.0])) == (UNSIGNED_CMAP, 0.0, 2.0)
    assert field_scale(np.array([-5e-5, 0.4]))[0] == UNSIGNED_CMAP  # round-off below 0 does not make it signed
    assert field_scale(np.array([-0.2, 0.27])) == (SIGNED_CMAP, -0.27, 0.27)
    cmap, lo, hi = field_scale(np.full(3, 7.0))  # constant: still a valid range
    assert cmap == UNSIGNED_CMAP and lo == 7.0 and hi > lo


def test_input_and_reconstruction_share_a_scale_and_the_error_has_its_own_symmetric_one():
    x = 1.0 + torch.rand(1, 1, 32, 32)  # positive
    y = x + 0.05 + 0.01 * torch.rand_like(x)  # an error of one sign
    fig = field_figure(x, y, ["sw/h"])
    drawn(fig)
    field, recon, error = image_axes(fig)
    assert field.images[0].get_clim() == recon.images[0].get_clim() == (float(x.min()), float(x.max()))
    lo, hi = error.images[0].get_clim()
    assert error.images[0].cmap.name == ERROR_CMAP
    assert lo == -hi and hi == pytest.approx(float((y - x).abs().max()))
    assert len(fig.axes) == 3 + 2  # and two colour bars: input and reconstruction, error


def test_the_caption_and_titles_name_each_sample_variable_and_its_nrmse():
    x = torch.randn(3, 1, 16, 16)
    batch = {
        "input": x,
        "recon": x + 0.1,  # RMSE 0.1
        "variable_id": torch.tensor([1, 0, 1]),
        "field_variables_in_std": torch.tensor([[2.0], [0.5], [2.0]]),
    }
    ((suffix, (image, caption)),) = reconstruction_panels(batch, "fields", ["ns/u", "sw/h"]).items()
    assert suffix == "" and image.ndim == 3
    assert caption.split("; ") == ["sw/h · nRMSE 5 %", "ns/u · nRMSE 20 %", "sw/h · nRMSE 5 %"]  # 100 · 0.1 / σ


def test_eeg_patches_are_traces_over_time():
    x = torch.randn(2, 256)
    y = x + 0.1 * torch.randn_like(x)
    fig = signal_figure(x, y, ["patch 0", "patch 1"], sfreq=torch.tensor([256.0, 128.0]))
    for ax, xi, yi, rate in zip(fig.axes, x, y, (256.0, 128.0), strict=True):
        lines = {line.get_label(): line for line in ax.get_children() if isinstance(line, Line2D)}
        assert np.allclose(lines["input"].get_ydata(), xi.numpy())
        assert np.allclose(lines["reconstruction"].get_ydata(), yi.numpy())
        assert np.allclose(lines["reconstruction − input"].get_ydata(), (yi - xi).numpy())
        assert lines["input"].get_xdata()[-1] == pytest.approx(255 / rate)  # seconds at the patch's own rate
        assert not ax.images
    ((_, (_, caption)),) = reconstruction_panels(
        {"input": x, "recon": y, "sfreq": torch.tensor([256.0, 128.0])}, "eeg"
    ).items()
    assert caption.startswith("patch 0 · 256 Hz · MSE ") and "patch 1 · 128 Hz" in caption


def test_images_stay_images_and_multi_band_captions_name_the_bands():
    x = torch.rand(2, 5, 8, 8)
    panels = reconstruction_panels({"input": x, "recon": x}, "galaxy_images", ["g", "r", "i", "z", "y"])
    assert sorted(panels) == ["/bands_0-2", "/bands_3-4"]
    image, caption = panels["/bands_0-2"]
    assert image.shape == (2 * 8, 3 * 8, 3) and caption.endswith("g, r, i as R, G, B")
    assert panels["/bands_3-4"][1].endswith("; z")  # a group under three bands shows its first
    rgb = torch.rand(2, 3, 8, 8)
    ((suffix, (image, _)),) = reconstruction_panels(
        {"input": rgb, "recon": rgb}, "images", ["red", "green", "blue"]
    ).items()
    assert suffix == "" and image.shape == (2 * 8, 3 * 8, 3)  # input | reconstruction | error in colour
