"""Shared fixtures: a small embedded data set generated once per session, and config composition."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
# small enough for a CPU test, big enough for a train/val/test split by trajectory
TINY_DATA = ["data.source.resolution=32", "data.source.n_traj=5", "data.source.n_frames=4"]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def compose_cfg(overrides: list[str], output_dir: Path, data_dir: Path) -> DictConfig:
    """The config `python train.py <overrides>` would run, with this test's output and data dirs."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[*overrides, f"paths.output_dir={output_dir}", f"paths.data_dir={data_dir}"],
        )


@pytest.fixture
def make_cfg(tmp_path, data_dir):
    def make(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
        return compose_cfg(overrides, output_dir or tmp_path / "run", data_dir)

    return make
