"""Reading users' field files at growing sizes: peak memory, time to the first batch and samples/s, with 0 and 2
workers, and the peak memory of a whole `debug=fast` training run on each file.

    python bench/bench_data.py                          # 0.5, 2 and 8 GB of HDF5 and .npy under --dir
    python bench/bench_data.py --sizes 0.5 2 --formats hdf5 --dir /scratch/bench

Writes The Well-like files (t0_fields/u, v [n_traj, 64, 128, 128] float32, chunked one snapshot per chunk) and
.npy arrays [n, 128, 128], once (kept under --dir; delete it afterwards: 21 GB at the defaults). Every
measurement runs in its own process, so peak RSS (ru_maxrss) is that of one configuration. The statistics pass
runs on the first setup and is cached (`stats` is the first run, `first batch` the second, cached one).
A benchmark, never run by the tests. Results: bench/results/data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HW, N_T = 128, 64
SNAPSHOT = HW * HW * 4  # bytes


def smooth_fields(rng: np.random.Generator, n: int) -> np.ndarray:
    """n smooth random [128, 128] fields (a few Fourier modes): cheap to make, compress like real data would not."""
    y, x = np.meshgrid(
        np.linspace(0, 2 * np.pi, HW, endpoint=False), np.linspace(0, 2 * np.pi, HW, endpoint=False), indexing="ij"
    )
    k = rng.integers(1, 6, size=(n, 2, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    return (np.sin(k[:, 0] * x + phase) * np.cos(k[:, 1] * y) + 0.1 * rng.standard_normal((n, HW, HW))).astype(
        np.float32
    )


def make_file(fmt: str, gb: float, folder: Path) -> Path:
    import h5py

    from tokenizers.load import atomic_write

    n_snap = int(gb * 2**30 / SNAPSHOT)
    path = folder / f"fields_{gb:g}gb.{'hdf5' if fmt == 'hdf5' else 'npy'}"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    with atomic_write(path) as tmp:
        if fmt == "hdf5":
            n_traj = max(3, n_snap // (2 * N_T))
            with h5py.File(tmp, "w") as f:
                for name in ("u", "v"):
                    ds = f.create_dataset(
                        f"t0_fields/{name}", shape=(n_traj, N_T, HW, HW), dtype="f4", chunks=(1, 1, HW, HW)
                    )
                    for traj in range(n_traj):
                        ds[traj] = smooth_fields(rng, N_T)
        else:
            a = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n_snap, HW, HW))
            for start in range(0, n_snap, 1024):
                a[start : start + 1024] = smooth_fields(rng, min(1024, n_snap - start))
            a.flush()
            del a
    return path


def source_args(fmt: str, path: Path) -> dict:
    from datamodules.sources import HDF5Fields, NpyFields

    return HDF5Fields(str(path)) if fmt == "hdf5" else NpyFields(str(path), layout="NHW")


def measure_loader(fmt: str, path: str, workers: int, batches: int, data_dir: str) -> dict:
    """In a fresh process: setup, the first training batch, then `batches` more."""
    import torch

    from datamodules.fields import FieldDataModule

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    dm = FieldDataModule(source_args(fmt, Path(path)), data_dir=data_dir, batch_size=16, num_workers=workers)
    dm.setup()
    t_setup = time.perf_counter() - t0
    it = iter(dm.train_dataloader())  # persistent workers: they live as long as this iterator
    next(it)
    t_first = time.perf_counter() - t0
    t1 = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(it)["field_variables_in"])
    rate = n / (time.perf_counter() - t1)
    del it  # ends the workers, so that their peak is counted below
    dm.splits.clear()
    import gc

    gc.collect()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest worker (shared pages included)
    return {
        "setup_s": t_setup,
        "first_batch_s": t_first,
        "samples_per_s": rate,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": children / 1024 if workers else float("nan"),
    }


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only), so the next reads come from the disk: cold-start figures."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def run_child(args: list[str], cold: bool = False) -> dict:
    if cold and not drop_page_cache():
        print("cannot drop the page cache (not root): figures with the file cached", flush=True)
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_peak_rss(fmt: str, path: Path, data_dir: Path) -> dict:
    """Peak RSS (MB) and wall time of `train.py experiment=phaedra debug=fast` on the file."""
    data = "fields_hdf5" if fmt == "hdf5" else "fields_npy"
    extra = [] if fmt == "hdf5" else ["data.source.layout=NHW"]
    cmd = [
        sys.executable,
        "train.py",
        "experiment=phaedra",
        "debug=fast",
        f"data={data}",
        f"data.source.path={path}",
        *extra,
        f"paths.data_dir={data_dir}",
        "logger=none",
        f"hydra.run.dir={data_dir}/run-{path.stem}-{fmt}",
    ]
    from bench.report import peak_rss_of

    peak_mb, wall, _ = peak_rss_of(cmd, ROOT)
    return {"train_peak_rss_mb": peak_mb, "train_wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.5, 2, 8], help="file sizes in GB")
    parser.add_argument("--formats", nargs="+", default=["hdf5", "npy"], choices=["hdf5", "npy"])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--dir", default="/tmp/scitok_bench_data")
    parser.add_argument("--no-train", action="store_true", help="skip the debug=fast training runs")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="empty the page cache before each measurement (root): reads come from the disk",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "data.json"))
    parser.add_argument(
        "--child", nargs=5, metavar=("FMT", "PATH", "WORKERS", "BATCHES", "DATA_DIR"), help=argparse.SUPPRESS
    )
    parser.add_argument("--make", nargs=3, metavar=("FMT", "GB", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        print(make_file(args.make[0], float(args.make[1]), Path(args.make[2])))
        return
    if args.child:
        fmt, path, workers, batches, data_dir = args.child
        print(json.dumps(measure_loader(fmt, path, int(workers), int(batches), data_dir)))
        return
    from bench.report import report

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for fmt in args.formats:
        for gb in args.sizes:
            t0 = time.perf_counter()
            # in a process of its own: writing through a memory map makes a process's peak RSS the file's size,
            # and Linux passes a parent's peak on to the children it forks (ru_maxrss survives fork and exec)
            made = subprocess.run(
                [sys.executable, __file__, "--make", fmt, str(gb), str(folder)],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            path = Path(made.stdout.strip().splitlines()[-1])
            print(
                f"{path} ({path.stat().st_size / 2**30:.2f} GB) ready in {time.perf_counter() - t0:.0f} s", flush=True
            )
            data_dir = folder / f"cache-{path.stem}-{fmt}"
            for f in data_dir.glob("stats/*.json"):
                f.unlink()  # the first run computes the statistics: measured
            cold = run_child([fmt, str(path), "0", "1", str(data_dir)], args.cold)
            train = {} if args.no_train else train_peak_rss(fmt, path, data_dir)
            for workers in args.workers:
                row = run_child([fmt, str(path), str(workers), str(args.batches), str(data_dir)], args.cold)
                rows.append(
                    {
                        "format": fmt,
                        "gb": gb,
                        "workers": workers,
                        "cold": args.cold,
                        "stats_s": cold["setup_s"],
                        **row,
                        **{k: train.get(k, float("nan")) for k in ("train_peak_rss_mb", "train_wall_s")},
                    }
                )
                print(rows[-1], flush=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    report(
        f"Field data loading (batch 16 of 128×128, {machine}, {'cold' if args.cold else 'warm'} page cache)",
        {
            "format": "{format}",
            "GB": "{gb:g}",
            "workers": "{workers}",
            "stats pass s": "{stats_s:.1f}",
            "first batch s": "{first_batch_s:.2f}",
            "samples/s": "{samples_per_s:.0f}",
            "loader peak RSS MB": "{peak_rss_mb:.0f}",
            "workers' peak RSS MB": "{worker_peak_rss_mb:.0f}",
            "debug=fast run peak RSS MB": "{train_peak_rss_mb:.0f}",
            "debug=fast run s": "{train_wall_s:.0f}",
        },
        rows,
        args.out,
    )


if __name__ == "__main__":
    main()
