"""Training throughput per experiment: samples/s, step time, peak memory, model FLOPs per sample and the fraction
of the machine's measured peak at the default sizes.

    python bench/bench_train.py                      # phaedra, fsq, the EEG experiments and svqvae
    python bench/bench_train.py --paper              # + phaedra_paper and svqvae_paper at batch 2 (128², 256²)
    python bench/bench_train.py --experiments phaedra_paper --steps 3 --warmup 1   # a paper config alone
    python bench/bench_train.py --experiments phaedra --steps 50

Runs the real Trainer (no validation, no logger) on each experiment's own data and batch size, times
the steps after a warm-up, prints one table and writes bench/results/train.json.

FLOPs per sample: TokenizerModule.flops_per_batch (torch's FlopCounterMode over forward + loss + backward of one
sample, at setup) / batch. Peak: the best of a few fp32 matmuls of 2048² on this CPU with all its threads (bf16 at
8192² on a GPU), measured before and after the experiments (the higher of the two: a machine shared with other
work measures low at times). Fraction of peak = FLOPs per sample × samples/s / peak.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lit_modules  # noqa: E402,F401 - resolvers
from bench.report import report  # noqa: E402
from lit_modules.memory import keep_freed_memory  # noqa: E402


class StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.times, self._t0 = warmup, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._t0)


def measure_peak() -> tuple[float, str]:
    """(FLOP/s, what) of the best of 10 dense matmuls: fp32 2048² on CPU, bf16 8192² on a GPU."""
    cuda = torch.cuda.is_available()
    n, dtype = (8192, torch.bfloat16) if cuda else (2048, torch.float32)
    a, b = (torch.randn(n, n, dtype=dtype, device="cuda" if cuda else "cpu") for _ in range(2))
    best = float("inf")
    for _ in range(12):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best, f"{'bf16' if cuda else 'fp32'} matmul {n}², {torch.get_num_threads()} threads"


PAPER = {
    "phaedra_paper": ["data.batch_size=2", "data.source.n_traj=6", "data.source.n_frames=4"],
    "svqvae_paper": ["data.batch_size=2"],
}


def bench(experiment: str, steps: int, warmup: int, data_dir: str, extra: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"experiment={experiment}",
                f"paths.data_dir={data_dir}",
                f"paths.output_dir={tempfile.mkdtemp()}",
                *extra,
            ],
        )
    if cfg.keep_freed_memory:  # as train.py does
        keep_freed_memory()
    L.seed_everything(0, verbose=False)
    dm = instantiate(cfg.data)
    module = instantiate(cfg.model, optimizer=cfg.optimizer, scheduler=cfg.scheduler, _recursive_=False)
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        precision=cfg.trainer.precision,
        devices=1,
        max_steps=warmup + steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        callbacks=[timer],
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=dm)
    step = sum(timer.times) / len(timer.times)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )  # this process runs one experiment
    flops = getattr(module, "flops_per_batch", None)
    return {
        "experiment": experiment,
        "flops_per_sample": flops / cfg.data.batch_size if flops else float("nan"),
        "batch_size": cfg.data.batch_size,
        "params_M": sum(p.numel() for p in module.parameters()) / 1e6,
        "step_ms": 1000 * step,
        "samples_per_s": cfg.data.batch_size / step,
        "peak_mem_MiB": peak,
        "peak_mem_kind": "cuda max allocated" if torch.cuda.is_available() else "process max RSS",
        "precision": str(cfg.trainer.precision),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--experiments", nargs="+", default=["phaedra", "fsq", "eeg", "eeg_snake", "eeg_film", "svqvae"]
    )
    parser.add_argument("--paper", action="store_true", help="also the paper configs, at batch 2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train.json"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every experiment")
    args = parser.parse_args()
    peak, peak_what = measure_peak()
    experiments = [*args.experiments, *(e for e in PAPER if args.paper and e not in args.experiments)]
    rows = []
    for e in experiments:  # a fresh process per experiment: its own peak memory, no shared caches
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            overrides = [*PAPER.get(e, []), *args.overrides]
            row = pool.submit(bench, e, args.steps, args.warmup, args.data_dir, overrides).result()
        row["gflop_per_sample"] = row["flops_per_sample"] / 1e9
        row["achieved_gflops"] = row["flops_per_sample"] * row["samples_per_s"] / 1e9
        rate = row["samples_per_s"]
        row["samples_per_s_text"] = f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"
        rows.append(row)
        print(row, flush=True)
    peak = max(peak, measure_peak()[0])
    for row in rows:
        row["peak_fraction_pct"] = 100 * row["achieved_gflops"] * 1e9 / peak
        row["peak_gflops"], row["peak_kind"] = peak / 1e9, peak_what
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    report(
        f"training throughput ({args.steps} timed steps after {args.warmup} warm-up) · {machine} · "
        f"measured peak {peak / 1e9:.0f} GFLOP/s ({peak_what})",
        {
            "experiment": "{experiment}",
            "batch": "{batch_size}",
            "params (M)": "{params_M:.2f}",
            "step (ms)": "{step_ms:.0f}",
            "samples/s": "{samples_per_s_text}",
            "GFLOP/sample": "{gflop_per_sample:.3f}",
            "GFLOP/s": "{achieved_gflops:.1f}",
            "% of peak": "{peak_fraction_pct:.0f}",
            "peak mem (MiB)": "{peak_mem_MiB:.0f}",
            "precision": "{precision}",
            "device": "{device}",
        },
        rows,
        args.out,
    )


if __name__ == "__main__":
    main()
