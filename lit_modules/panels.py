"""Validation panels people read: a field in a colour map with its variable named and colour bars, EEG patches as
traces over time, images as images.

Figures are `matplotlib.figure.Figure`s drawn by the Agg canvas, not pyplot: no global figure registry to leak into,
no GUI backend, safe in a training process. `render` turns one into an RGB array for `wandb.Image`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lit_modules.metrics import pearson

SIGNED_CMAP = "RdBu_r"  # a field with both signs: diverging, its white centre at 0
UNSIGNED_CMAP = "viridis"  # a field of one sign (a density, a height): sequential over its range
ERROR_CMAP = "PuOr_r"  # reconstruction − input, centred at 0; not the field's map, so the two are not confused
TILE_INCHES = 2.4  # a 64² field keeps ≥ 2 inches (200 px at DPI) after titles and colour bars take their share
DPI = 100
# the batch keys (datamodules/fields.py, eeg.py) that name a sample: its variable, the variable's σ, the patch's rate
LABEL_KEYS = ("variable_id", "field_variables_in_std", "sfreq")


def render(fig: Figure) -> np.ndarray:
    """Figure -> uint8 RGB [H, W, 3]; the figure is cleared afterwards (it holds the panel's arrays)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    fig.clear()
    return rgb


def field_scale(x: np.ndarray) -> tuple[str, float, float]:
    """A field's colour map and range (cmap, vmin, vmax): diverging and symmetric about 0 when it has both signs,
    so 0 is the map's centre colour; else sequential over its min–max. A sign reaching under 1 % of the other's
    extent is a solver's round-off (Gray–Scott's v dips to −5e-5 of 0.4), not a signed field."""
    lo, hi = float(x.min()), float(x.max())
    if min(-lo, hi) > 0.01 * max(-lo, hi):
        m = max(-lo, hi)
        return SIGNED_CMAP, -m, m
    if hi <= lo:  # a constant field: any non-empty range draws it in one colour
        hi = lo + max(abs(lo), 1.0) * 1e-6
    return UNSIGNED_CMAP, lo, hi


def _extend(y: np.ndarray, vmin: float, vmax: float) -> str:
    """The colour bar's arrows: which ends of the reconstruction the input's scale clips."""
    below, above = float(y.min()) < vmin, float(y.max()) > vmax
    return {(True, True): "both", (True, False): "min", (False, True): "max"}.get((below, above), "neither")


def field_figure(inputs: torch.Tensor, recons: torch.Tensor, titles: Sequence[str]) -> Figure:
    """inputs, recons: [N, 1, H, W] (channel 0 drawn) -> a row per sample: input | reconstruction | error
    (reconstruction − input). Input and reconstruction share the input's scale (`field_scale`) and one colour bar;
    the error has its own scale, symmetric about 0. titles[i] heads row i (variable and error of the sample).

    Laid out by hand in inches (tiles of TILE_INCHES on their short side, fixed room for colour-bar labels): the
    constrained layout solver let labels run off the edge and costs most of the drawing time."""
    h, w = inputs.shape[-2:]
    scale = min(TILE_INCHES / min(h, w), 2.5 * TILE_INCHES / max(h, w))  # a long strip stays within 2.5 tiles
    tw, th = w * scale, h * scale
    pad, gap, bar, labels, head = 0.15, 0.12, 0.15, 0.7, 0.6  # inches: margin, tile–bar gap, bar, its labels, titles
    fig_w = pad + tw + pad + tw + gap + bar + labels + tw + gap + bar + labels
    row_h = th + head + 0.2
    fig = Figure(figsize=(fig_w, len(inputs) * row_h), dpi=DPI)
    fig_h = fig.get_figheight()

    def axes(left: float, top: float, width: float, height: float):
        return fig.add_axes((left / fig_w, (fig_h - top - height) / fig_h, width / fig_w, height / fig_h))

    for i, (x, y, title) in enumerate(zip(inputs.float().cpu(), recons.float().cpu(), titles, strict=True)):
        x, y = x[0].numpy(), y[0].numpy()
        err = y - x
        cmap, vmin, vmax = field_scale(x)
        emax = max(float(np.abs(err).max()), 1e-12)
        top = i * row_h + head
        fig.text(0.5, 1 - (i * row_h + 0.08) / fig_h, title, ha="center", va="top", fontsize=11, fontweight="bold")
        lefts = (pad, 2 * pad + tw, 2 * pad + 2 * tw + gap + bar + labels)
        tiles = (
            ("input", x, cmap, vmin, vmax),
            ("reconstruction", y, cmap, vmin, vmax),
            ("reconstruction − input", err, ERROR_CMAP, -emax, emax),
        )
        images = []
        for left, (name, img, cm, lo, hi) in zip(lefts, tiles, strict=True):
            ax = axes(left, top, tw, th)
            images.append(ax.imshow(img, cmap=cm, vmin=lo, vmax=hi, interpolation="nearest", origin="lower"))
            ax.set_title(name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        for image, left, extend in ((images[1], lefts[1], _extend(y, vmin, vmax)), (images[2], lefts[2], "neither")):
            colorbar = fig.colorbar(image, cax=axes(left + tw + gap, top, bar, th), extend=extend)
            colorbar.ax.tick_params(labelsize=8)
    return fig


def field_titles(
    inputs: torch.Tensor, recons: torch.Tensor, names: Sequence[str], sigma: torch.Tensor | None
) -> list[str]:
    """'<dataset>/<variable> · nRMSE 3.1 %' per sample: nRMSE as val/nrmse defines it (RMSE over the variable's σ,
    ×100, lit_modules/metrics.py FieldErrors), with the sample's own std where σ is unknown (sigma None)."""
    err = (recons.float() - inputs.float()).flatten(1)
    scale = sigma.float().flatten() if sigma is not None else inputs.float().flatten(1).std(1)
    nrmse = 100 * err.pow(2).mean(1).sqrt() / scale.clamp_min(1e-12)
    return [f"{name} · nRMSE {v:.3g} %" for name, v in zip(names, nrmse.tolist(), strict=True)]


def signal_figure(
    inputs: torch.Tensor, recons: torch.Tensor, titles: Sequence[str], sfreq: torch.Tensor | None = None
) -> Figure:
    """inputs, recons: [N, P] -> a row per patch: input, reconstruction and their difference over time (seconds when
    sfreq [N] in Hz is given, else samples); titles[i] heads row i."""
    n = len(inputs)
    fig = Figure(figsize=(9, 1.9 * n + 0.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for i, (ax, x, y, title) in enumerate(zip(axes, inputs.float().cpu(), recons.float().cpu(), titles, strict=True)):
        t = np.arange(len(x)) / float(sfreq[i]) if sfreq is not None else np.arange(len(x))
        ax.plot(t, (y - x).numpy(), color="0.6", lw=0.8, label="reconstruction − input")
        ax.plot(t, x.numpy(), color="black", lw=1.1, label="input")
        ax.plot(t, y.numpy(), color="tab:red", lw=1.1, label="reconstruction")
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlim(t[0], t[-1])
        ax.axhline(0, color="0.85", lw=0.6, zorder=0)
        ax.set_xlabel("time (s)" if sfreq is not None else "sample", fontsize=8)
        ax.set_ylabel("normalized", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[0].legend(loc="lower right", bbox_to_anchor=(1, 1), fontsize=8, ncols=3, frameon=False)  # beside the title
    return fig


def signal_titles(inputs: torch.Tensor, recons: torch.Tensor, sfreq: torch.Tensor | None) -> list[str]:
    """'patch 2 · 256 Hz · MSE 0.031 · r 0.93' per patch: MSE and Pearson r as val/mse and val/pearson define them
    (lit_modules/metrics.py SignalErrors), on the normalized signal."""
    x, y = inputs.float(), recons.float()
    mse, r = (y - x).pow(2).mean(1), pearson(y, x)
    rates = [f" · {float(f):g} Hz" for f in sfreq] if sfreq is not None else [""] * len(x)
    return [
        f"patch {i}{rate} · MSE {m:.3g} · r {c:.3f}"
        for i, (rate, m, c) in enumerate(zip(rates, mse.tolist(), r.tolist(), strict=True))
    ]


def reconstruction_panel(inputs: torch.Tensor, *recons: torch.Tensor) -> np.ndarray:
    """Images: inputs and one or more reconstructions: [N, C, H, W] -> uint8 rows of input | recon … | |error of the
    last recon|: [N·H, (2 + len(recons))·W, 3] for RGB (C = 3), else [N·H, …] from channel 0. Every tile of a row
    shares the input's min–max scale; the error is scaled by the same range.
    """
    rgb = inputs.shape[1] == 3
    rows = []
    for x, *ys in zip(inputs.float().cpu(), *(r.float().cpu() for r in recons), strict=True):
        if not rgb:
            x, ys = x[:1], [y[:1] for y in ys]
        lo, rng = x.min(), (x.max() - x.min()).clamp_min(1e-12)
        tiles = [(x - lo) / rng, *((y - lo) / rng for y in ys), (ys[-1] - x).abs() / rng]
        rows.append(torch.cat([t.clamp(0, 1) for t in tiles], dim=2))  # [C, H, (2 + R)·W]
    panel = torch.cat(rows, dim=1).permute(1, 2, 0)  # [N·H, (2 + R)·W, C]
    panel = panel if rgb else panel[..., 0]
    return (panel.numpy() * 255).astype(np.uint8)


def reconstruction_panels(
    batch: dict[str, torch.Tensor], kind: str | None, variables: Sequence[str] = ()
) -> dict[str, tuple[np.ndarray, str]]:
    """The first validation samples -> {key suffix: (uint8 RGB or grey image, caption)}, drawn by data kind:
        fields        one field_figure ("" suffix), rows titled by variable and nRMSE
        eeg           one signal_figure (also any [N, P] batch when the kind is unknown)
        images, galaxy_images, …   reconstruction_panel, one per group of three bands ("/bands_0-2", …) past three
    batch: "input" and "recon" (the batch adapter's update output) and those of LABEL_KEYS the data has
    ("variable_id" indexes `variables`, the metadata's variable names)."""
    inputs, recons = batch["input"], batch["recon"]
    if kind == "fields":
        ids = batch.get("variable_id")
        if ids is not None and variables:
            names = [variables[int(i)] for i in ids]
        else:
            names = [f"sample {i}" for i in range(len(inputs))]
        titles = field_titles(inputs, recons, names, batch.get("field_variables_in_std"))
        return {"": (render(field_figure(inputs, recons, titles)), "; ".join(titles))}
    if kind == "eeg" or inputs.ndim == 2:
        sfreq = batch.get("sfreq")
        titles = signal_titles(inputs, recons, sfreq)
        return {"": (render(signal_figure(inputs, recons, titles, sfreq)), "; ".join(titles))}
    names = list(variables) if len(variables) == inputs.shape[1] else [f"channel {c}" for c in range(inputs.shape[1])]
    caption = "input | reconstruction | |error|, each row on its input's min–max range"
    panels = {}
    for first in range(0, inputs.shape[1], 3):  # one panel per group of three bands (RGB); a smaller group: its first
        bands = slice(first, min(first + 3, inputs.shape[1]))
        shown = f"{', '.join(names[bands])} as R, G, B" if bands.stop - first == 3 else names[first]
        suffix = f"/bands_{first}-{bands.stop - 1}" if inputs.shape[1] > 3 else ""
        panels[suffix] = (reconstruction_panel(inputs[:, bands], recons[:, bands]), f"{caption}; {shown}")
    return panels
