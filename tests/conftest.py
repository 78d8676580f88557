"""Fixtures: a session data dir, config composition per test, one debug=fast run per experiment shared by the
tests that need one. What tests import (experiments, tolerances, composition) is in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import DictConfig

from tests.helpers import Run, compose_cfg

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def make_cfg(tmp_path, data_dir):
    def make(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
        return compose_cfg(overrides, output_dir or tmp_path / "run", data_dir)

    return make


@pytest.fixture(scope="session")
def experiment_run(tmp_path_factory, data_dir):
    """experiment_run(name) -> Run: one debug=fast run per experiment, made on first use and shared."""
    from train import train

    runs: dict[str, Run] = {}

    def get(experiment: str) -> Run:
        if experiment not in runs:
            out = tmp_path_factory.mktemp(f"run_{experiment}")
            cfg = compose_cfg([f"experiment={experiment}", "debug=fast"], out, data_dir)
            runs[experiment] = Run(experiment, cfg, out, train(cfg))
        return runs[experiment]

    return get


@pytest.fixture(scope="session")
def token_store(tmp_path_factory, data_dir, experiment_run):
    """token_store(experiment) -> the out_dir of `python encode.py ckpt=<that experiment's debug=fast run>` (train,
    val and test stores), made on first use and shared."""
    from encode import encode
    from tests.test_encode_stores import encode_cfg

    stores: dict[str, Path] = {}

    def get(experiment: str) -> Path:
        if experiment not in stores:
            out = tmp_path_factory.mktemp(f"tokens_{experiment}")
            encode(encode_cfg(experiment_run(experiment).last_ckpt, out, data_dir))
            stores[experiment] = out
        return stores[experiment]

    return get
