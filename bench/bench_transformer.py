"""Transformer throughput: training tokens/s with model FLOPs utilisation, and generation cost per token with and
without the KV cache as the sequence grows.

    python bench/bench_transformer.py                          # d_model 256, 4 layers, 4 heads, context 512
    python bench/bench_transformer.py --d-model 768 --layers 12 --heads 12 --batch 4

MFU = (6·N + 12·L·T·d) FLOPs per token (PaLM's count: N the parameters used in matmuls — the tied LM head included,
the type/position lookups not — L layers, context T, width d) ×
tokens/s ÷ the machine's measured dense matmul peak (fp32 on CPU, bf16 on GPU; measured here on 2048² matmuls).
Generation: greedy, one sequence, the time of each new token at several prompt lengths — flat with the cache,
growing without it. Prints two tables and writes bench/results/transformer.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import report  # noqa: E402
from models import Transformer, TransformerConfig  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """Measured FLOP/s of an n×n matmul (the best of `repeats`)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def train_throughput(
    model: Transformer, batch: int, context: int, steps: int, device: str, autocast: torch.dtype | None
) -> float:
    """Tokens/s of forward + backward + AdamW step on random tokens."""
    cfg = model.config
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(cfg.vocab_size, (batch, context + 1), device=device)
    types = torch.zeros(batch, context, dtype=torch.long, device=device)
    times = []
    for step in range(steps + 2):  # 2 warm-up steps
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=autocast, enabled=autocast is not None):
            logits = model(ids[:, :-1], types)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if step >= 2:
            times.append(time.perf_counter() - t0)
    return batch * context / (sum(times) / len(times))


@torch.no_grad()
def per_token_ms(model: Transformer, prompt_len: int, n_new: int, use_cache: bool, device: str) -> float:
    prompt = torch.randint(model.config.vocab_size, (1, prompt_len), device=device)
    layout = torch.zeros(prompt_len + n_new, dtype=torch.long, device=device)
    model.generate(prompt, layout, 2, use_cache=use_cache)  # warm-up
    sync()
    t0 = time.perf_counter()
    model.generate(prompt, layout, n_new, use_cache=use_cache)
    sync()
    return 1000 * (time.perf_counter() - t0) / n_new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 256, 448])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "transformer.json"))
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    autocast = torch.bfloat16 if device == "cuda" else None  # bf16 on CPU is hundreds of times slower here
    cfg = TransformerConfig(
        vocab_size=args.vocab,
        n_types=8,
        max_len=args.context,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
    )
    model = Transformer(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())  # the tied head is counted once
    # matmul parameters: everything but the type/position lookups (the token table is also the LM head's weight)
    matmul_params = (
        n_params - model.type_emb.weight.numel() - (model.pos_emb.weight.numel() if model.pos_emb is not None else 0)
    )
    flops_per_token = 6 * matmul_params + 12 * cfg.n_layers * args.context * cfg.d_model
    peak = matmul_peak(device, autocast or torch.float32)
    trained = torch.compile(model) if args.compile else model
    tokens_per_s = train_throughput(trained, args.batch, args.context, args.steps, device, autocast)
    host = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    train_row = {
        "params_M": n_params / 1e6,
        "context": args.context,
        "batch": args.batch,
        "tokens_per_s": tokens_per_s,
        "achieved_gflops": tokens_per_s * flops_per_token / 1e9,
        "peak_gflops": peak / 1e9,
        "mfu": tokens_per_s * flops_per_token / peak,
        "device": host,
        "precision": "bf16-mixed" if autocast else "fp32",
    }
    report(
        "transformer training",
        {
            "params (M)": "{params_M:.1f}",
            "context": "{context}",
            "batch": "{batch}",
            "tokens/s": "{tokens_per_s:,.0f}",
            "GFLOP/s": "{achieved_gflops:.1f}",
            "peak GFLOP/s": "{peak_gflops:.0f}",
            "MFU": "{mfu:.1%}",
            "precision": "{precision}",
            "device": "{device}",
        },
        [train_row],
        args.out,
    )
    model.eval()
    gen_rows = []
    for length in args.lengths:
        n_new = min(32, args.context - length)
        gen_rows.append(
            {
                "prompt": length,
                "cached_ms": per_token_ms(model, length, n_new, True, device),
                "uncached_ms": per_token_ms(model, length, n_new, False, device),
            }
        )
    report(
        "generation: ms per new token (greedy, batch 1)",
        {"prompt length": "{prompt}", "with KV cache": "{cached_ms:.2f}", "without": "{uncached_ms:.2f}"},
        gen_rows,
        args.out,
    )
    Path(args.out).write_text(json.dumps({"train": train_row, "generation": gen_rows}, indent=2))


if __name__ == "__main__":
    main()
