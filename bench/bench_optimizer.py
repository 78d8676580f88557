"""AdEMAMix's share of a training step: the paper-size Phaedra tokenizer (≈98M parameters), fp32, batch 2 of 128²
on CPU (bf16 autocast on a GPU), one tensor at a time (foreach=False, the CPU default) against the multi-tensor
update (foreach=True, the GPU default).

    python bench/bench_optimizer.py
    python bench/bench_optimizer.py --model phaedra --batch 16 --resolution 64

Times forward + backward and optimizer.step separately (median of --steps after a warm-up), prints one table and
writes bench/results/optimizer.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import report, tokenizer_spec  # noqa: E402
from lit_modules.ademamix import AdEMAMix  # noqa: E402
from lit_modules.memory import keep_freed_memory  # noqa: E402


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="phaedra_paper")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "optimizer.json"))
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    keep_freed_memory()  # as train.py does
    torch.manual_seed(0)
    model = instantiate(tokenizer_spec(args.model)).to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    n_tensors = sum(1 for _ in model.parameters())
    x = torch.randn(args.batch, 1, args.resolution, args.resolution, device=device)
    rows = []
    for foreach in (False, True):
        opt = AdEMAMix(model.parameters(), lr=1e-5, foreach=foreach)
        fwd_bwd, step = [], []
        for i in range(args.steps + 2):
            sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                out = model(x)
                aux = sum(out.aux_losses.values(), torch.zeros((), device=device))
                loss = (out.recon.float() - x).abs().mean() + aux
            loss.backward()
            sync(device)
            t1 = time.perf_counter()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            t2 = time.perf_counter()
            if i >= 2:  # warm-up: the optimizer's state is created at its first step
                fwd_bwd.append(t1 - t0)
                step.append(t2 - t1)
        f, s = statistics.median(fwd_bwd), statistics.median(step)
        rows.append(
            {
                "model": args.model,
                "params_M": n_params / 1e6,
                "tensors": n_tensors,
                "foreach": foreach,
                "fwd_bwd_ms": 1000 * f,
                "optimizer_ms": 1000 * s,
                "optimizer_share_pct": 100 * s / (f + s),
                "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                "threads": torch.get_num_threads(),
                "batch": args.batch,
                "resolution": args.resolution,
            }
        )
        print(rows[-1], flush=True)
    report(
        f"AdEMAMix share of a step ({args.model}, {n_params / 1e6:.1f}M parameters in {n_tensors} tensors, "
        f"batch {args.batch} of {args.resolution}², {rows[0]['device']})",
        {
            "foreach": "{foreach}",
            "fwd+bwd (ms)": "{fwd_bwd_ms:.0f}",
            "optimizer (ms)": "{optimizer_ms:.1f}",
            "optimizer share (%)": "{optimizer_share_pct:.2f}",
        },
        rows,
        args.out,
    )


if __name__ == "__main__":
    main()
