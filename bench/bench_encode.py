"""encode.py on users' HDF5 files of growing size: peak memory, wall time and snapshots/s of a whole export; then
the transformer's side: `experiment=field_transformer`'s datamodule on the store just written (setup, 20 train
batches, the true fields of a validation batch), its peak memory and time.

    python bench/bench_encode.py                        # 0.5 and 2 GB under --dir
    python bench/bench_encode.py --sizes 0.5 2 8 --dir /scratch/bench --ch 64

The files are bench_data.py's (The Well-like t0_fields/u, v [n_traj, 64, 128, 128] float32). The tokenizer is an
untrained Phaedra (`--ch` base channels; the timing of encoding depends on it, the memory of the export should not),
saved with its data metadata as a checkpoint of its own. Every export runs in a fresh process whose peak RSS
(ru_maxrss) is measured; the statistics pass of the data runs first and is cached, outside the measured run.
A benchmark, never run by the tests. Results: bench/results/encode.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_checkpoint(path: Path, data_path: Path, ch: int) -> Path:
    """An untrained Phaedra for 128² fields of this file's variables, as a checkpoint load_tokenizer reads."""
    from omegaconf import OmegaConf

    from bench.report import tokenizer_spec
    from datamodules.sources import HDF5Fields
    from tokenizers.base import DataMetadata
    from tokenizers.load import build, save_tokenizer

    spec = OmegaConf.to_container(tokenizer_spec("phaedra"), resolve=True) | {"ch": ch, "resolution": 128}
    (arrays,) = HDF5Fields(str(data_path)).open(data_path.parent)
    names = [f"{arrays.name}/{v}" for v in arrays.variables]
    metadata = DataMetadata("fields", "standardize", names, [0.0] * len(names), [1.0] * len(names))
    return save_tokenizer(build(spec), spec, metadata, path)


def export(ckpt: Path, data_path: Path, out_dir: Path, data_dir: Path, batch_size: int) -> dict:
    """Peak RSS (MB), wall time and rows of `python encode.py` on the file, in a fresh process."""
    from bench.report import peak_rss_of

    cmd = [
        sys.executable,
        "encode.py",
        f"ckpt={ckpt}",
        "data=fields_hdf5",
        f"data.source.path={data_path}",
        f"out_dir={out_dir}",
        f"paths.data_dir={data_dir}",
        f"batch_size={batch_size}",
        f"hydra.run.dir={out_dir}/run",
    ]
    peak_mb, wall, _ = peak_rss_of(cmd, ROOT)
    rows = sum(json.loads((out_dir / s / "meta.json").read_text())["rows"] for s in ("train", "val", "test"))
    return {"peak_rss_mb": peak_mb, "wall_s": wall, "rows": rows}


def read_store(store: str, batches: int) -> dict:
    """In a fresh process: FieldTokenDataModule on a store (what `experiment=field_transformer data.store=…` reads),
    setup, `batches` train batches and the evaluator's true future fields of one val batch."""
    import time

    from datamodules.field_tokens import FieldTokenDataModule
    from lit_modules.memory import keep_freed_memory

    keep_freed_memory()  # as train.py does
    t0 = time.perf_counter()
    dm = FieldTokenDataModule(store=store, batch_size=4, eval_batch_size=64)
    dm.setup("fit")
    t_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    it = iter(dm.train_dataloader())
    for _ in range(batches):
        next(it)
    t_batches = time.perf_counter() - t0
    t0 = time.perf_counter()
    val = next(iter(dm.val_dataloader()))
    truth = dm.evaluation_inputs()["truth"]["val"]
    future = truth[val["dst"]]
    return {
        "pairs": len(dm.splits["train"]),
        "setup_s": t_setup,
        "batch_ms": 1000 * t_batches / batches,
        "truth_s": time.perf_counter() - t0,
        "eval_fields": list(future.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.5, 2], help="file sizes in GB")
    parser.add_argument("--dir", default="/tmp/scitok_bench_data")
    parser.add_argument("--ch", type=int, default=8, help="Phaedra base channels")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "encode.json"))
    parser.add_argument("--read", nargs=2, metavar=("STORE", "BATCHES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read:
        print(json.dumps(read_store(args.read[0], int(args.read[1]))))
        return
    from bench.report import peak_rss_of, report

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for gb in args.sizes:
        made = subprocess.run(  # a process of its own: writing through h5py would raise this one's peak RSS
            [sys.executable, str(ROOT / "bench" / "bench_data.py"), "--make", "hdf5", str(gb), str(folder)],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        path = Path(made.stdout.strip().splitlines()[-1])
        ckpt = make_checkpoint(folder / f"phaedra_ch{args.ch}_{path.stem}.ckpt", path, args.ch)
        out_dir = folder / f"tokens_{path.stem}"
        data_dir = folder / "data"
        stats = (  # the statistics pass, cached: the export below measures encoding alone
            "from datamodules.fields import FieldDataModule; from datamodules.sources import HDF5Fields; "
            f"FieldDataModule(HDF5Fields({str(path)!r}), data_dir={str(data_dir)!r}).setup()"
        )
        subprocess.run([sys.executable, "-c", stats], check=True, cwd=ROOT)
        result = export(ckpt, path, out_dir, data_dir, args.batch_size)
        read_peak, _, output = peak_rss_of([sys.executable, __file__, "--read", str(out_dir), "20"], ROOT)
        read = json.loads(output.splitlines()[-1])
        rows.append(
            {
                "file_gb": gb,
                "snapshots": result["rows"],
                "peak_rss_mb": round(result["peak_rss_mb"]),
                "wall_s": round(result["wall_s"], 1),
                "snapshots_per_s": round(result["rows"] / result["wall_s"], 1),
                "read_peak_rss_mb": round(read_peak),
                "read_setup_s": round(read["setup_s"], 1),
                "read_batch_ms": round(read["batch_ms"], 1),
                "read_truth_s": round(read["truth_s"], 2),
            }
        )
        print(rows[-1], flush=True)
    columns = {
        "file": "{file_gb:g} GB",
        "snapshots": "{snapshots}",
        "peak RSS": "{peak_rss_mb} MB",
        "wall": "{wall_s} s",
        "snapshots/s": "{snapshots_per_s}",
        "transformer data: peak RSS": "{read_peak_rss_mb} MB",
        "setup": "{read_setup_s} s",
        "train batch": "{read_batch_ms} ms",
        "true fields of a val batch": "{read_truth_s} s",
    }
    for row in rows:
        row.update(machine=platform.processor() or platform.machine(), ch=args.ch, batch_size=args.batch_size)
    report(f"encode.py on HDF5 files: Phaedra ch={args.ch}, batch {args.batch_size}", columns, rows, args.out)


if __name__ == "__main__":
    main()
