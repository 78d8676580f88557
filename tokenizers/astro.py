"""Astronomy tokenizers (README: "Galaxies"): multi-band galaxy images (autoencoder + KMeans codebook), catalog scalars
(quantile bins) and spectra (KMeans over per-pixel features). Each follows the Tokenizer protocol (tokenizers/base.py).

    GalaxyImageTokenizer     [B, bands, S, S] robust-arcsinh image -> {"image": [B, (S/4)²]} ids of a K-means codebook
    ScalarQuantileTokenizer  [B, C] catalog values (NaN = missing) -> {column: [B, 1]} bin ids (last id: MISS)
    SpectrumTokenizer        [B, L] flux, ivar [B, L]              -> {"spectrum": [B, L/patch]} K-means ids

The codebooks are fitted, not trained by gradients: `fit(...)` on train-split data (the image codebook after its
autoencoder has trained; lit_modules/codebook.py does that as stage 2 of a training run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from tokenizers.base import TokenizerOutput, check_ids, codebook_stats, full_precision
from tokenizers.blocks import ResBlock
from tokenizers.kmeans import assign, fit_kmeans


# ---- preprocessing ------------------------------------------------------------------------------------
def masked_median(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Median over the last axis of the values where `valid` ([..., N] bool), the lower one for even counts (as
    torch.median); 0 where nothing is valid. x: [..., N] -> [...]. (nanmedian selects; a sort is ~5× slower.)"""
    median = torch.where(valid, x, torch.full_like(x, math.nan)).nanmedian(-1).values
    return torch.nan_to_num(median, nan=0.0)


def robust_arcsinh(image: torch.Tensor) -> torch.Tensor:
    """Per object and band: x' = asinh((x − median) / (3·MAD + 1e-6)), median and MAD over the valid pixels
    (finite and non-zero); invalid pixels become 0. image: [B, bands, H, W] -> same shape, float32."""
    flat = image.float().flatten(-2)
    valid = torch.isfinite(flat) & (flat != 0)
    clean = torch.where(valid, flat, torch.zeros_like(flat))
    median = masked_median(clean, valid)
    mad = masked_median((clean - median[..., None]).abs(), valid)
    out = torch.asinh((clean - median[..., None]) / (3 * mad[..., None] + 1e-6))
    return torch.where(valid, out, torch.zeros_like(out)).view_as(image)


def ellipse_weights(
    size: int,
    x0: torch.Tensor,
    y0: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    theta: torch.Tensor,
    scale: float = 4.0,
    outside: float = 0.3,
) -> torch.Tensor:
    """Loss weights [B, 1, size, size]: 1 inside the ellipse of centre (x0, y0) (pixels; x = column, y = row),
    semi-axes scale·a and scale·b, major axis at angle theta (radians, counter-clockwise from +x), else `outside`."""
    coords = torch.arange(size, dtype=torch.float32)
    dy = coords[None, :, None] - y0.float()[:, None, None]
    dx = coords[None, None, :] - x0.float()[:, None, None]
    cos, sin = torch.cos(theta.float())[:, None, None], torch.sin(theta.float())[:, None, None]
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    sa = (scale * a.float()).clamp_min(1e-6)[:, None, None]
    sb = (scale * b.float()).clamp_min(1e-6)[:, None, None]
    inside = (u / sa) ** 2 + (v / sb) ** 2 <= 1
    return torch.where(inside, 1.0, outside)[:, None]


# ---- the image tokenizer ------------------------------------------------------------------------------
class GalaxyImageTokenizer(nn.Module):
    """Autoencoder [B, bands, S, S] -> latents [B, latent_dim, S/4, S/4] -> [B, bands, S, S], and a K-means codebook
    of `codebook_size` latent vectors: tokens = the nearest centroid of each latent position, in raster order.

    Encoder: 1×1 conv bands→c₀; ResBlock(c₀), stride-2 conv c₀→c₁; ResBlock(c₁), stride-2 conv c₁→c₁; ResBlock(c₁);
    1×1 conv → latent_dim (channels = (c₀, c₁), the reference design's (64, 128)). The decoder mirrors it with
    transposed convs. norm_groups=0 drops the GroupNorms of the ResBlocks.

    Until the codebook is fitted (`fit_codebook`, stage 2), forward reconstructs from the continuous latents and
    gives no tokens, and encode/decode refuse; afterwards forward reconstructs from the tokens (decoder on
    centroids), so decode(encode(x)) == forward(x).recon. `reconstruct_from_latents` is always the continuous path.
    """

    def __init__(
        self,
        bands: int = 6,
        latent_dim: int = 2,
        channels: Sequence[int] = (64, 128),
        codebook_size: int = 2048,
        norm_groups: int = 8,
    ):
        super().__init__()
        c0, c1 = channels
        self.bands, self.latent_dim, self.codebook_size = bands, latent_dim, codebook_size

        def res(c: int) -> nn.Module:
            return ResBlock(c, c, groups=norm_groups) if norm_groups else _PlainResBlock(c)

        self.encoder = nn.Sequential(
            nn.Conv2d(bands, c0, 1),
            res(c0),
            nn.Conv2d(c0, c1, 4, stride=2, padding=1),
            res(c1),
            nn.Conv2d(c1, c1, 4, stride=2, padding=1),
            res(c1),
            nn.Conv2d(c1, latent_dim, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_dim, c1, 1),
            res(c1),
            nn.ConvTranspose2d(c1, c1, 4, stride=2, padding=1),
            res(c1),
            nn.ConvTranspose2d(c1, c0, 4, stride=2, padding=1),
            res(c0),
            nn.Conv2d(c0, bands, 1),
        )
        self.register_buffer("codebook", torch.zeros(codebook_size, latent_dim))
        self.register_buffer("codebook_fitted", torch.zeros((), dtype=torch.bool))

    @property
    def streams(self) -> dict[str, int]:
        return {"image": self.codebook_size}

    @property
    def last_layer(self) -> torch.Tensor:
        return self.decoder[-1].weight

    @property
    def fitted(self) -> bool:
        return self.codebook.device.type == "meta" or bool(self.codebook_fitted)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.bands or x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(
                f"GalaxyImageTokenizer expects input of shape [B, {self.bands}, S, S] with S divisible "
                f"by 4, got {tuple(x.shape)}"
            )

    def _require_codebook(self) -> None:
        if not self.fitted:
            raise RuntimeError(
                "GalaxyImageTokenizer: the codebook is not fitted yet (stage 2 of "
                "experiment=astro_image fits it after the autoencoder trains)"
            )

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, bands, S, S] -> continuous latents [B, latent_dim, S/4, S/4]."""
        self._check(x)
        return self.encoder(x)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents [B, D, h, w] -> (ids [B, h·w] raster order, centroids [B, D, h, w]); fp32 even under autocast."""
        B, D, h, w = z.shape
        with full_precision(z.device):
            vectors = z.float().permute(0, 2, 3, 1).reshape(-1, D)
            if z.device.type == "meta":
                ids = torch.zeros(len(vectors), dtype=torch.long, device=z.device)
            else:
                ids = assign(vectors, self.codebook)[0]
            zq = self.codebook[ids].view(B, h, w, D).permute(0, 3, 1, 2)
        return ids.view(B, h * w), zq.to(z.dtype)

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        z = self.encode_latents(x)
        if not self.fitted:
            return TokenizerOutput(self.decoder(z), {})
        ids, zq = self.quantize(z)
        return TokenizerOutput(self.decoder(zq), {"image": ids})

    def reconstruct_from_latents(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode_latents(x))

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._require_codebook()
        return {"image": self.quantize(self.encode_latents(x))[0]}

    def decode(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        self._require_codebook()
        ids = tokens["image"]
        side = math.isqrt(ids.shape[1])
        if ids.ndim != 2 or side * side != ids.shape[1]:
            raise ValueError(
                f"GalaxyImageTokenizer.decode expects image ids [B, h·w] of a square grid, got {tuple(ids.shape)}"
            )
        check_ids(ids, self.codebook_size, "image")
        zq = self.codebook[ids].view(len(ids), side, side, self.latent_dim).permute(0, 3, 1, 2)
        return self.decoder(zq)

    def code_vectors(self, stream: str) -> torch.Tensor:
        if stream != "image":
            raise KeyError(f"GalaxyImageTokenizer has the stream 'image', not {stream!r}")
        return self.codebook

    @torch.no_grad()
    def fit_codebook(self, latents: torch.Tensor, **kmeans) -> dict[str, float]:
        """Fit the codebook on latent vectors [N, latent_dim] (fit_kmeans keyword arguments: iters, batch_size,
        max_vectors, seed …) and return the fit's inertia per vector."""
        result = fit_kmeans(latents, self.codebook_size, **kmeans)
        self.codebook.copy_(result.centroids.to(self.codebook))
        self.codebook_fitted.fill_(True)
        return {
            "inertia_per_vector": result.inertia / min(len(latents), kmeans.get("max_vectors") or len(latents)),
            "iterations": float(result.n_iter),
        }


class _PlainResBlock(nn.Module):
    """x + conv(SiLU(conv(SiLU(x)))): the ResBlock without normalization (norm_groups=0)."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.SiLU(), nn.Conv2d(c, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


# ---- codebook statistics ------------------------------------------------------------------------------
def codebook_report(ids: torch.Tensor, size: int, sq_error: torch.Tensor | None = None) -> dict[str, float]:
    """From token ids (any shape) of a codebook of `size`: used codes (count), codebook_stats (usage %, entropy
    bits, perplexity 2^H), perplexity / K, the share of the 10 most frequent codes (top10_mass), and the mean
    squared quantization error per vector when `sq_error` (one value per id) is given."""
    counts = torch.bincount(ids.flatten().long(), minlength=size).double()
    stats = {k: float(v) for k, v in codebook_stats(counts).items()}
    out = {
        "used_codes": float((counts > 0).sum()),
        **stats,
        "perplexity_over_k": stats["perplexity"] / size,
        "top10_mass": float((counts / counts.sum().clamp_min(1)).topk(min(10, size)).values.sum()),
    }
    if sq_error is not None:
        out["quantization_mse"] = float(sq_error.double().mean())
    return out


# ---- catalog scalars ------------------------------------------------------------------------------------
class ScalarQuantileTokenizer(nn.Module):
    """One stream per catalog column: `bins` quantile bins of the train split (token = bin index, decode = bin
    centre) and a MISS token (id `bins`) for missing or non-finite values, never the column mean.

    Edges are the quantiles 0, 1/bins, …, 1 of the column's finite train values, made strictly increasing (ties —
    common in catalogs — are spread by the smallest float32 step above the previous edge). Values outside the
    fitted range go to the first / last bin and are counted in `clipped` [columns] (a running count since the fit).
    """

    def __init__(self, columns: Sequence[str], bins: int = 1024):
        super().__init__()
        self.columns, self.bins = list(columns), bins
        self.register_buffer("edges", torch.zeros(len(self.columns), bins + 1))
        self.register_buffer("clipped", torch.zeros(len(self.columns), dtype=torch.long))

    @property
    def streams(self) -> dict[str, int]:
        return {c: self.bins + 1 for c in self.columns}

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != len(self.columns):
            raise ValueError(
                f"ScalarQuantileTokenizer expects input of shape [B, {len(self.columns)}] "
                f"(columns {self.columns}), got {tuple(x.shape)}"
            )

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> ScalarQuantileTokenizer:
        """x: [N, C] train-split values (NaN = missing)."""
        self._check(x)
        q = torch.linspace(0, 1, self.bins + 1, dtype=torch.float64)
        for c, name in enumerate(self.columns):
            values = x[:, c].double()
            values = values[torch.isfinite(values)]
            if len(values) == 0:
                raise ValueError(f"ScalarQuantileTokenizer: column {name!r} has no finite value in the train split")
            self.edges[c] = strictly_increasing(torch.quantile(values, q).float())
        self.clipped.zero_()
        return self

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check(x)
        out = {}
        for c, name in enumerate(self.columns):
            v, edges = x[:, c].float(), self.edges[c]
            finite = torch.isfinite(v)
            self.clipped[c] += int(((v < edges[0]) | (v > edges[-1]))[finite].sum())
            ids = (torch.searchsorted(edges, v.contiguous(), right=True) - 1).clamp(0, self.bins - 1)
            out[name] = torch.where(finite, ids, torch.full_like(ids, self.bins))[:, None]
        return out

    def decode(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """{column: [B, 1]} -> [B, C] bin centres, NaN for MISS."""
        cols = []
        for c, name in enumerate(self.columns):
            ids = tokens[name][:, 0]
            check_ids(ids, self.bins + 1, name)
            centre = self.centres(c)
            cols.append(torch.where(ids == self.bins, math.nan, centre[ids.clamp_max(self.bins - 1)]))
        return torch.stack(cols, 1)

    def centres(self, c: int) -> torch.Tensor:
        return 0.5 * (self.edges[c, 1:] + self.edges[c, :-1])

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        tokens = self.encode(x)
        return TokenizerOutput(self.decode(tokens), tokens)

    def code_vectors(self, stream: str) -> torch.Tensor:
        """[bins + 1, 2]: (bin centre, 0) per bin and (0, 1) for MISS."""
        if stream not in self.columns:
            raise KeyError(f"ScalarQuantileTokenizer has no column {stream!r}; columns: {self.columns}")
        centre = self.centres(self.columns.index(stream))
        return torch.cat([torch.stack([centre, torch.zeros_like(centre)], 1), centre.new_tensor([[0.0, 1.0]])])


def strictly_increasing(edges: torch.Tensor) -> torch.Tensor:
    """Raise each edge to at least the next float32 above its predecessor (quantiles of tied values repeat)."""
    out = edges.clone()
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            out[i] = torch.nextafter(out[i - 1], out.new_tensor(math.inf))
    return out


# ---- spectra --------------------------------------------------------------------------------------------
class SpectrumTokenizer(nn.Module):
    """Spectra [B, L] (flux, with inverse variance ivar [B, L]) -> {"spectrum": [B, L/patch]} K-means ids.

    Per spectrum: robust normalization f' = clip((f − median) / (1.4826·MAD), ±12) over pixels with ivar > 0, and
    the precision p = sqrt(ivar)·1.4826·MAD (the per-pixel signal-to-noise scale in the same units; 0 where
    ivar = 0). Each patch of `patch` pixels gives a feature (f'₁ … f'ₚ, p₁ … pₚ), standardized by the train split's
    mean and std per feature, and its token is the nearest of `codebook_size` K-means centroids. The position in
    the sequence is the wavelength index (the grid is fixed). decode gives the normalized flux f' [B, L].
    """

    def __init__(self, pixels: int, patch: int = 8, codebook_size: int = 2048):
        super().__init__()
        if pixels % patch:
            raise ValueError(f"SpectrumTokenizer: {pixels} pixels are not divisible into patches of {patch}")
        self.pixels, self.patch, self.codebook_size = pixels, patch, codebook_size
        self.register_buffer("codebook", torch.zeros(codebook_size, 2 * patch))
        self.register_buffer("feature_mean", torch.zeros(2 * patch))
        self.register_buffer("feature_std", torch.ones(2 * patch))

    @property
    def streams(self) -> dict[str, int]:
        return {"spectrum": self.codebook_size}

    def normalize(self, flux: torch.Tensor, ivar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (f' [B, L], p [B, L]) as in the class docstring."""
        if flux.ndim != 2 or flux.shape[1] != self.pixels or ivar.shape != flux.shape:
            raise ValueError(
                f"SpectrumTokenizer expects flux and ivar of shape [B, {self.pixels}], got "
                f"{tuple(flux.shape)} and {tuple(ivar.shape)}"
            )
        valid = (ivar > 0) & torch.isfinite(flux) & torch.isfinite(ivar)
        clean = torch.where(valid, flux.float(), torch.zeros_like(flux, dtype=torch.float32))
        median = masked_median(clean, valid)[:, None]
        scale = (1.4826 * masked_median((clean - median).abs(), valid)[:, None]).clamp_min(1e-12)
        norm = torch.where(valid, ((clean - median) / scale).clamp(-12, 12), torch.zeros_like(clean))
        precision = torch.where(valid, ivar.float().clamp_min(0).sqrt() * scale, torch.zeros_like(clean))
        return norm, precision

    def features(self, flux: torch.Tensor, ivar: torch.Tensor) -> torch.Tensor:
        """[B, L/patch, 2·patch], unstandardized."""
        norm, precision = self.normalize(flux, ivar)
        B = len(flux)
        return torch.cat([norm.view(B, -1, self.patch), precision.view(B, -1, self.patch)], -1)

    @torch.no_grad()
    def fit(self, flux: torch.Tensor, ivar: torch.Tensor, **kmeans) -> dict[str, float]:
        feats = self.features(flux, ivar).flatten(0, 1)
        self.feature_mean.copy_(feats.mean(0))
        self.feature_std.copy_(feats.std(0).clamp_min(1e-6))
        result = fit_kmeans((feats - self.feature_mean) / self.feature_std, self.codebook_size, **kmeans)
        self.codebook.copy_(result.centroids)
        return {"inertia": result.inertia}

    def encode(self, flux: torch.Tensor, ivar: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = (self.features(flux, ivar) - self.feature_mean) / self.feature_std
        ids = assign(feats.flatten(0, 1), self.codebook)[0]
        return {"spectrum": ids.view(len(flux), -1)}

    def decode(self, tokens: dict[str, torch.Tensor], ivar: torch.Tensor | None = None) -> torch.Tensor:
        """-> normalized flux f' [B, L] (the flux half of each centroid, unstandardized)."""
        ids = tokens["spectrum"]
        check_ids(ids, self.codebook_size, "spectrum")
        feats = self.codebook[ids] * self.feature_std + self.feature_mean  # [B, n, 2·patch]
        return feats[..., : self.patch].reshape(len(ids), -1)

    def forward(self, flux: torch.Tensor, ivar: torch.Tensor) -> TokenizerOutput:
        tokens = self.encode(flux, ivar)
        return TokenizerOutput(self.decode(tokens), tokens)

    def code_vectors(self, stream: str) -> torch.Tensor:
        """[K, 2·patch]: each centroid in feature units (f'₁ … f'ₚ, p₁ … pₚ)."""
        if stream != "spectrum":
            raise KeyError(f"SpectrumTokenizer has the stream 'spectrum', not {stream!r}")
        return self.codebook * self.feature_std + self.feature_mean


# ---- one galaxy's modalities together ------------------------------------------------------------------
class GalaxyTokenizers(nn.Module):
    """The tokenizers of a galaxy's modalities as one encoder, the rows of a galaxy token store (encode.py):
    encode(image [B, bands, S, S], catalog=[B, C], spectrum=[B, L], spectrum_ivar=[B, L]) ->
    {"image": [B, (S/4)²], "catalog": [B, C] (one id per catalog column, MISS = bins), "spectrum": [B, L/patch]}, the
    catalog and spectrum streams where it holds their tokenizer. `metadata`: the image tokenizer's (the store's kind
    and normalization are the image's)."""

    def __init__(
        self,
        image: GalaxyImageTokenizer,
        scalars: ScalarQuantileTokenizer | None = None,
        spectra: SpectrumTokenizer | None = None,
    ):
        super().__init__()
        self.image, self.scalars, self.spectra = image, scalars, spectra
        self.metadata = getattr(image, "metadata", None)

    @property
    def streams(self) -> dict[str, int]:
        """image: the codebook size; catalog: bins + 1 (every column shares the bins and MISS); spectrum: K."""
        streams = dict(self.image.streams)
        if self.scalars is not None:
            streams["catalog"] = self.scalars.bins + 1
        if self.spectra is not None:
            streams.update(self.spectra.streams)
        return streams

    def encode(
        self,
        x: torch.Tensor,
        catalog: torch.Tensor | None = None,
        spectrum: torch.Tensor | None = None,
        spectrum_ivar: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        tokens = dict(self.image.encode(x))
        if self.scalars is not None:
            if catalog is None:
                raise ValueError(f"GalaxyTokenizers: catalog [B, {len(self.scalars.columns)}] is needed, none given")
            ids = self.scalars.encode(catalog)
            tokens["catalog"] = torch.cat([ids[c] for c in self.scalars.columns], 1)
        if self.spectra is not None:
            if spectrum is None or spectrum_ivar is None:
                raise ValueError("GalaxyTokenizers: spectrum and spectrum_ivar [B, L] are needed, none given")
            tokens.update(self.spectra.encode(spectrum, spectrum_ivar))
        return tokens
