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
    experiment, tokenizer, error, make_cfg, tmp_path, token_store
):
    store = token_store(tokenizer)
    cfg = make_cfg(
        [f"experiment={experiment}", "debug=fast", f"data.store={store}", *SMALL], output_dir=tmp_path / "run"
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


def test_without_a_store_the_error_shows_the_three_commands(make_cfg):
    cfg = make_cfg(["experiment=field_transformer", "debug=fast", *SMALL])
    with pytest.raises(ValueError, match=r"data.store is not set: .*experiment=phaedra.*python encode.py ckpt="):
        train(cfg)


def test_a_store_alone_trains_without_its_data(make_cfg, tmp_path, token_store, monkeypatch):
    """model.evaluator=null: the transformer reads the store and the tokenizer checkpoint, never the data files."""
    import datamodules.tokens

    def no_data(*args, **kwargs):
        raise AssertionError("the data were read")

    monkeypatch.setattr(datamodules.tokens, "stored_data", no_data)
    store = token_store("phaedra")
    overrides = ["experiment=field_transformer", "debug=fast", f"data.store={store}", "model.evaluator=null"]
    value = train(make_cfg([*overrides, "logger=none", *SMALL], output_dir=tmp_path / "run"))
    assert value is not None and np.isfinite(value)
