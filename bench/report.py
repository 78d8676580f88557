"""What the benchmarks share: one rich table on the terminal and the raw rows as JSON; a model config's tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table


def report(title: str, columns: dict[str, str], rows: list[dict], out: str | Path) -> None:
    """columns: header -> format string applied to a row dict (e.g. "{step_ms:.0f}")."""
    table = Table(title=title)
    for header in columns:
        table.add_column(header)
    for row in rows:
        table.add_row(*(fmt.format(**row) for fmt in columns.values()))
    Console(width=160).print(table)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


def tokenizer_spec(model: str) -> DictConfig:
    """conf/model/<model>.yaml's tokenizer config, merged over the model config it extends (its `defaults`)."""
    conf = Path(__file__).resolve().parents[1] / "conf" / "model"
    spec = OmegaConf.load(conf / f"{model}.yaml")
    if "defaults" in spec:  # a preset that extends another model config
        base = OmegaConf.load(conf / f"{spec.defaults[0]}.yaml")
        spec = OmegaConf.merge(base, {k: v for k, v in spec.items() if k != "defaults"})
    return spec.tokenizer


def peak_rss_of(cmd: list[str], cwd: str | Path) -> tuple[float, float, str]:
    """(peak RSS in MB, wall seconds, its standard output) of the command `cmd`, run in a fresh wrapper process whose
    only child it is: the wrapper's RUSAGE_CHILDREN peak is the command's (a parent's own peak would pass on to a
    forked child). Raises RuntimeError with the end of its output if it fails."""
    wrapper = (
        "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, cwd=cwd)
    if out.returncode:
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-3000:])
    *output, peak = out.stdout.strip().splitlines()
    return int(peak) / 1024, time.perf_counter() - t0, "\n".join(output)
