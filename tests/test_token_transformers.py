"""field_transformer and eeg_transformer through train.py, on the token stores encode.py writes."""

import numpy as np
import pytest

from tests.test_train import wandb_history
from train import train

SMALL = ["model.transformer.d_model=32", "model.transformer.n_layers=1", "model.transformer.n_heads=2"]


@pytest.mark.parametrize(
    ("experiment", "tokenizer", "error"),
    [("field_transformer", "phaedra", "rel_l1"), ("eeg_transformer", "eeg", "mse")],
)
def test_field_and_eeg_transformers_log_data_space_errors(
    experiment, tokenizer, error, make_cfg, tmp_path, experiment_run
):
    ckpt = experiment_run(tokenizer).last_ckpt
    cfg = make_cfg(
        [f"experiment={experiment}", "debug=fast", f"data.tokenizer_ckpt={ckpt}", *SMALL], output_dir=tmp_path / "run"
    )
    value = train(cfg)
    assert value is not None and np.isfinite(value)
    last, _ = wandb_history(tmp_path / "run")
    modality = "field" if experiment == "field_transformer" else "eeg"
    expected = {"train/ce", f"val/accuracy/{modality}", f"val/perplexity/{modality}", f"test/accuracy/{modality}"}
    expected |= {
        f"{stage}/{name}/{error}" for stage in ("val", "test") for name in ("forecast", "persistence", "tokenizer")
    }
    assert not expected - set(last), sorted(expected - set(last))
    # the persistence reference does not depend on the model: the same value at every validation
    assert np.isfinite(last[f"test/forecast/{error}"])


@pytest.mark.slow
def test_without_a_checkpoint_the_tokenizer_is_trained_first_once(make_cfg, tmp_path, monkeypatch):
    """data.tokenizer_ckpt=null: `python train.py experiment=phaedra` runs first, on the transformer's own data source
    and seed, into <data_dir>/tokenizers/; a second run reuses it without training."""
    import subprocess

    import yaml

    from datamodules.tokens import tokenizer_checkpoint
    from tests.helpers import compose_cfg

    data_dir = tmp_path / "data"
    overrides = [
        "experiment=field_transformer",
        "debug=fast",
        *SMALL,
        "logger=none",
        "seed=3",
        'data.train_tokenizer.overrides=["debug=fast","logger=none","test=false"]',
    ]
    cfg = compose_cfg(overrides, tmp_path / "run", data_dir)
    assert train(cfg) is not None
    (run_dir,) = (data_dir / "tokenizers").iterdir()
    child = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    assert child["task_name"] == "phaedra" and child["seed"] == 3
    assert child["data"]["source"] == dict(cfg.data.source)  # the small source of this test, not phaedra's default
    first = tokenizer_checkpoint(
        None,
        "PhaedraTokenizer",
        "phaedra",
        ["debug=fast", "logger=none", "test=false"],
        data_dir,
        3,
        train=False,
        source=dict(cfg.data.source),
    )
    assert first == (run_dir / "checkpoints" / "last.ckpt").resolve()

    def no_training(*args, **kwargs):
        raise AssertionError("trained the tokenizer again")

    monkeypatch.setattr(subprocess, "run", no_training)
    assert train(compose_cfg(overrides, tmp_path / "again", data_dir)) is not None
