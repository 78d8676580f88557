"""Precision of Phaedra's 1024-level amplitude quantizer under bf16 autocast against fp32 (issue 25 item 4).

    python bench/bench_quantizer_precision.py                 # 10^6 pre-quantizer values, on CUDA if present
    python bench/bench_quantizer_precision.py --n 200000 --device cpu
    python bench/bench_quantizer_precision.py --ckpt outputs/<run>/checkpoints/last.ckpt   # + a Phaedra's latents

The amplitude quantizer is `experiment=phaedra`'s: tokenizers.fsq.FSQ([1024], gain=0.1) (conf/model/phaedra.yaml,
amp_levels and amp_gain). Its input is swept densely and uniformly over [−z_max, z_max], far enough into tanh's
saturation that the outermost levels are reached (z_max = 60: tanh(6) = 1 − 1.2e-5; the outermost level starts
at tanh ≈ 0.998), so every level of the grid is hit by many inputs (the narrowest level, at the centre, is
1/(gain·half) ≈ 0.02 wide in z; the sweep's step is 2·z_max/n). Rows, all on the same inputs:
  fp32                      FSQ on fp32 inputs, autocast off: the reference
  autocast bf16             the same FSQ call inside torch.autocast(device, bfloat16): FSQ.forward runs in
                            tokenizers.base.full_precision (autocast disabled, inputs cast to fp32), so = fp32
  autocast bf16, bf16 input the input first rounded to bfloat16, as a conv's output under autocast is (Phaedra's
                            quant_conv produces the latent the quantizer sees), then the fp32 FSQ
  naive bf16 rounding       tanh(g·z + shift)·half − offset cast to bfloat16 before rounding: what Phaedra's
                            released code does when it quantizes under bf16 autocast
  paper_parity fp32         the released code's tan / (1 − ε) bounding (conf paper_parity=true), in fp32
With --ckpt (a Phaedra checkpoint), three more rows on the amplitude latents of that tokenizer on the embedded
fields' validation split (conf experiment=phaedra's data, normalized with the checkpoint's statistics): the
latents computed in fp32, the whole encoder (quant_conv included) run under bf16 autocast, and naive bf16 rounding
of the fp32 latents; "ids changed" then compares with the fp32 latents' ids.
Columns: distinct ids reached (of 1024), the largest gap between consecutive reached ids (1 = none skipped), the
share of inputs whose id differs from the fp32 reference, and the largest |Δid| from it. Writes
bench/results/quantizer_precision.json.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import report, tokenizer_spec  # noqa: E402
from tokenizers.fsq import FSQ  # noqa: E402


def naive_bf16_ids(fsq: FSQ, z: torch.Tensor) -> torch.Tensor:
    """The FSQ's ids with its bounded value rounded to bfloat16 before round(): bf16 keeps 8 significant bits, so
    levels beyond ±256 fall on a grid of 2 (and beyond ±128 the half-level offset is lost)."""
    bounded = torch.tanh(z.float() * fsq.gain + fsq._shift) * fsq._half - fsq._offset
    k = torch.clamp(torch.round(bounded.bfloat16().float()), fsq._k_min, fsq._k_max)
    return fsq.k_to_ids(k)


def checkpoint_latents(ckpt: str, device: torch.device) -> tuple[FSQ, torch.Tensor, torch.Tensor]:
    """(amplitude FSQ, fp32 amplitude latents [N, 1], the same under bf16 autocast) of a Phaedra checkpoint on the
    embedded fields' validation split."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from tokenizers import load_tokenizer

    tokenizer = load_tokenizer(ckpt).to(device)
    if getattr(tokenizer, "amp", None) is None:
        raise ValueError(f"{ckpt} is not a Phaedra checkpoint with an amplitude stream")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        data = instantiate(compose("train", overrides=["experiment=phaedra"]).data)
    data.prepare_data()
    data.setup("validate")
    if tokenizer.metadata is not None:
        data.use_statistics(tokenizer.metadata)
    latents: dict[bool, list[torch.Tensor]] = {False: [], True: []}
    with torch.no_grad():
        for batch in data.val_dataloader():
            x = batch["field_variables_in"].to(device)
            for bf16 in latents:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    z = tokenizer.quant_conv(tokenizer.encoder(x))  # [B, z_channels, h, w]; amp is the last
                latents[bf16].append(z[:, -1].reshape(-1, 1))
    return tokenizer.amp, torch.cat(latents[False]).float(), torch.cat(latents[True])


def summary(name: str, ids: torch.Tensor, reference: torch.Tensor, levels: int) -> dict:
    reached = torch.unique(ids)
    gaps = reached.diff()
    return {
        "variant": name,
        "distinct_ids": int(reached.numel()),
        "levels": levels,
        "largest_gap": int(gaps.max()) if gaps.numel() else 0,
        "changed_pct": 100 * float((ids != reference).double().mean()),
        "max_id_shift": int((ids - reference).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="pre-quantizer values in the sweep")
    parser.add_argument("--z-max", type=float, default=60.0, help="the sweep covers [-z_max, z_max]")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ckpt", help="a Phaedra checkpoint: add rows for its latents on the embedded fields")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quantizer_precision.json"))
    args = parser.parse_args()

    spec = tokenizer_spec("phaedra")
    levels, gain = int(spec.amp_levels), float(spec.amp_gain)
    device = torch.device(args.device)
    fsq = FSQ([levels], gain=gain).to(device)
    parity = FSQ([levels], gain=gain, paper_parity=True).to(device)
    z = torch.linspace(-args.z_max, args.z_max, args.n, device=device)[:, None]  # [n, 1]: one FSQ dimension

    with torch.no_grad():
        reference = fsq(z)[1]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            autocast_ids = fsq(z)[1]
            autocast_bf16_input = fsq(z.bfloat16())[1]
        rows = [
            summary("fp32", reference, reference, levels),
            summary("autocast bf16", autocast_ids, reference, levels),
            summary("autocast bf16, bf16 input", autocast_bf16_input, reference, levels),
            summary("naive bf16 rounding (released code)", naive_bf16_ids(fsq, z), reference, levels),
            summary("paper_parity fp32", parity(z)[1], reference, levels),
        ]
        if args.ckpt:
            amp, z32, z16 = checkpoint_latents(args.ckpt, device)
            ids32 = amp(z32)[1]
            rows += [
                summary("checkpoint latents, fp32", ids32, ids32, levels),
                summary("checkpoint latents, encoder under bf16 autocast", amp(z16)[1], ids32, levels),
                summary("checkpoint latents, naive bf16 rounding", naive_bf16_ids(amp, z32), ids32, levels),
            ]
            print(f"{args.ckpt}: {len(z32)} amplitude latents in [{float(z32.min()):.3g}, {float(z32.max()):.3g}]")
    host = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    where = f"{device.type} ({host})"
    for row in rows:
        row.update(n=args.n, z_max=args.z_max, gain=gain, device=where, torch=torch.__version__, ckpt=args.ckpt)
    report(
        f"Phaedra amplitude FSQ ({levels} levels, gain {gain}): ids reached on {args.n} values in ±{args.z_max:g}",
        {
            "variant": "{variant}",
            "distinct ids": "{distinct_ids} / {levels}",
            "largest gap": "{largest_gap}",
            "ids changed vs fp32": "{changed_pct:.2f} %",
            "max |Δid|": "{max_id_shift}",
        },
        rows,
        args.out,
    )


if __name__ == "__main__":
    main()
