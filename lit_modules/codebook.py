"""Stage 2 of a two-stage tokenizer (the astro image autoencoder): fit a K-means codebook on the train split's
latents once the autoencoder has trained, inside the same run; optionally stage 3, the decoder fine-tuned on the
quantized latents (encoder and codebook frozen).

    FitCodebook(at_step=None)   fits at the end of the last training step (before the final validation), or at
                                optimizer step `at_step`, after which only the decoder trains (stage 3)

The codebook is a buffer of the tokenizer, so every checkpoint written after the fit holds it, and a resumed run
that finds it fitted does not fit again. The tokenizer provides `encode_latents(x) -> [B, D, h, w]`,
`fit_codebook(vectors [N, D], **kmeans)`, `quantize(z)`, `reconstruct_from_latents(x)`, `fitted`, and
`encoder`/`decoder` (tokenizers/astro.py: GalaxyImageTokenizer).

Right after the fit it logs, on the validation split (held out): `codebook/{used_codes, usage, entropy_bits,
perplexity, perplexity_over_k, top10_mass, quantization_mse}`, `codebook/psnr_latents` and `codebook/psnr_tokens`
(the data adapter's PSNR of the reconstruction from the continuous latents and from the tokens), and a W&B panel per
group of three bands: input | from latents | from tokens | |error of tokens|.
"""

from __future__ import annotations

import logging
import time
import warnings

import lightning as L
import torch

from lit_modules.callbacks import _wandb_loggers
from lit_modules.panels import reconstruction_panel
from tokenizers.astro import codebook_report

log = logging.getLogger("scitok")


class FitCodebook(L.Callback):
    """See the module docstring. kmeans: fit_kmeans keyword arguments (iters, tol, batch_size, max_vectors, seed,
    init_size); backend "torch" (tokenizers/kmeans.py, on the module's device) or "sklearn" (MiniBatchKMeans)."""

    def __init__(
        self,
        at_step: int | None = None,
        max_vectors: int = 262_144,
        iters: int = 30,
        tol: float = 1e-3,
        kmeans_batch_size: int | None = None,
        backend: str = "torch",
        seed: int = 0,
        n_panels: int = 4,
    ):
        if backend not in ("torch", "sklearn"):
            raise ValueError(f"FitCodebook.backend must be 'torch' or 'sklearn', got {backend!r}")
        if at_step is not None and at_step < 1:
            raise ValueError(f"FitCodebook.at_step must be >= 1 (or null: at the end), got {at_step}")
        self.at_step, self.max_vectors, self.backend, self.n_panels = at_step, max_vectors, backend, n_panels
        self.kmeans = dict(iters=iters, tol=tol, batch_size=kmeans_batch_size, seed=seed)

    def fit_step(self, trainer: L.Trainer) -> int:
        if self.at_step is not None:
            return self.at_step
        if trainer.max_steps is None or trainer.max_steps < 0:
            raise ValueError("FitCodebook without at_step fits at trainer.max_steps, which is not set")
        return trainer.max_steps

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.tokenizer.fitted:  # resumed after the fit: stage 3 goes on with the encoder frozen
            self._freeze_encoder(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.fit_step(trainer) and not pl_module.tokenizer.fitted:
            self.fit(trainer, pl_module)
            if trainer.global_step < trainer.max_steps:
                self._freeze_encoder(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not pl_module.tokenizer.fitted:
            log.warning(
                "training stopped at step %d, before the codebook step %d: the checkpoints hold no codebook "
                "(resume with ckpt_path=<run>/checkpoints/last.ckpt to finish)",
                trainer.global_step,
                self.fit_step(trainer),
            )

    @staticmethod
    def _freeze_encoder(pl_module: L.LightningModule) -> None:
        pl_module.tokenizer.encoder.requires_grad_(False)  # AdamW skips parameters without gradients

    @torch.no_grad()
    def latents(self, pl_module: L.LightningModule, datamodule) -> torch.Tensor:
        """Latent vectors [N, D] of train objects in their fixed order, as many objects as max_vectors needs."""
        tokenizer, chunks, n = pl_module.tokenizer, [], 0
        for batch in datamodule.eval_loader("train"):
            x = pl_module.adapter.unpack(batch).x.to(pl_module.device)
            z = tokenizer.encode_latents(x).float()
            chunks.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
            n += len(chunks[-1])
            if n >= self.max_vectors:
                break
        return torch.cat(chunks)

    def fit(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tokenizer, was_training = pl_module.tokenizer, pl_module.tokenizer.training
        tokenizer.eval()
        try:
            start = time.perf_counter()
            vectors = self.latents(pl_module, trainer.datamodule)
            if self.backend == "sklearn":
                stats = self._fit_sklearn(tokenizer, vectors)
            else:
                stats = tokenizer.fit_codebook(vectors, max_vectors=self.max_vectors, **self.kmeans)
            if trainer.world_size > 1:  # every rank fits on the same vectors; rank 0's codebook makes them identical
                tokenizer.codebook.copy_(trainer.strategy.broadcast(tokenizer.codebook, src=0))
            stats["fit_seconds"] = time.perf_counter() - start
            stats["fit_vectors"] = float(min(len(vectors), self.max_vectors))
            stats.update(self.report(trainer, pl_module))
        finally:
            tokenizer.train(was_training)
        log.info(
            "stage 2: codebook of %d fitted at step %d: %s",
            tokenizer.codebook_size,
            trainer.global_step,
            {k: round(v, 4) for k, v in stats.items()},
        )
        for logger in trainer.loggers:
            try:
                logger.log_metrics({f"codebook/{k}": v for k, v in stats.items()}, step=trainer.global_step)
            except Exception as e:  # a logger failure must never stop training
                warnings.warn(f"logging the codebook statistics failed: {e!r}", stacklevel=1)

    def _fit_sklearn(self, tokenizer, vectors: torch.Tensor) -> dict[str, float]:
        from sklearn.cluster import MiniBatchKMeans

        x = (
            vectors[
                torch.randperm(len(vectors), generator=torch.Generator().manual_seed(self.kmeans["seed"]))[
                    : self.max_vectors
                ]
            ]
            .cpu()
            .numpy()
        )
        km = MiniBatchKMeans(
            tokenizer.codebook_size,
            batch_size=self.kmeans["batch_size"] or 4096,
            max_iter=self.kmeans["iters"],
            random_state=self.kmeans["seed"],
            n_init=1,
        ).fit(x)
        tokenizer.codebook.copy_(torch.as_tensor(km.cluster_centers_, dtype=torch.float32))
        tokenizer.codebook_fitted.fill_(True)
        return {"inertia_per_vector": float(km.inertia_) / len(x), "iterations": float(km.n_iter_)}

    @torch.no_grad()
    def report(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Codebook statistics and PSNR from latents vs from tokens on the validation split."""
        tokenizer, adapter, datamodule = pl_module.tokenizer, pl_module.adapter, trainer.datamodule
        metrics = {name: adapter.metric(1).to(pl_module.device) for name in ("latents", "tokens")}
        ids_all, sq_err, panel = [], [], None
        for batch in datamodule.eval_loader("val"):
            batch = {k: v.to(pl_module.device) for k, v in batch.items()}
            x = adapter.unpack(batch).x
            z = tokenizer.encode_latents(x)
            ids, zq = tokenizer.quantize(z)
            from_latents, from_tokens = tokenizer.decoder(z), tokenizer.decoder(zq)
            adapter.update(metrics["latents"], from_latents, batch, None)
            adapter.update(metrics["tokens"], from_tokens, batch, None)
            ids_all.append(ids.flatten().cpu())
            sq_err.append((z - zq).float().pow(2).sum(1).flatten().cpu())
            if panel is None:
                k = self.n_panels
                panel = (x[:k].cpu(), from_latents[:k].cpu(), from_tokens[:k].cpu())
        out = codebook_report(torch.cat(ids_all), tokenizer.codebook_size, torch.cat(sq_err))
        for name, metric in metrics.items():
            out[f"psnr_{name}"] = float(metric.compute()["psnr"])
        self._log_panels(trainer, panel)
        return out

    def _log_panels(self, trainer: L.Trainer, panel) -> None:
        loggers = _wandb_loggers(trainer)
        if not loggers or panel is None or not trainer.is_global_zero:
            return
        try:
            import wandb

            x, from_latents, from_tokens = panel
            media = {}
            for first in range(0, x.shape[1], 3):
                bands = slice(first, min(first + 3, x.shape[1]))
                image = reconstruction_panel(x[:, bands], from_latents[:, bands], from_tokens[:, bands])
                media[f"codebook/reconstructions/bands_{first}-{bands.stop - 1}"] = wandb.Image(
                    image, caption="input | from latents | from tokens | |tokens − input| (per-row input range)"
                )
            for lg in loggers:
                lg.experiment.log({**media, "trainer/global_step": trainer.global_step})
        except Exception as e:  # a logger failure must never stop training
            warnings.warn(f"W&B codebook panels failed and were skipped: {e!r}", stacklevel=1)
