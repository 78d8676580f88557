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
    if experiment == "field_transformer":  # the data-space loss of model.decode_weight (the experiment's default)
        expected |= {"train/decoded", "val/decoded", "test/decoded"}
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


def test_evaluate_judges_a_field_transformer_per_trajectory_beside_persistence_and_the_floor(
    make_cfg, tmp_path, token_store, data_dir
):
    """evaluate.py on a field_transformer checkpoint (twice): its forecast and the present plus its predicted change,
    twice; its tokenizer's floor and persistence once (they depend on the pairs alone), each inside its interval;
    persistence equal to Σ|present − future| / Σ|future| over the store's test pairs, per variable and overall."""
    import torch

    from evaluate import evaluate, load_forecaster
    from tests.test_evaluate import eval_cfg

    store, run = token_store("phaedra"), tmp_path / "run"
    train(make_cfg(["experiment=field_transformer", "debug=fast", f"data.store={store}", "data.delta=1", *SMALL], run))
    ckpt = run / "checkpoints" / "last.ckpt"
    out = evaluate(eval_cfg(tmp_path / "eval", data_dir, f"ckpts=[{ckpt},{ckpt}]", "bootstrap.resamples=200"))
    entries = {e["label"]: e for e in out["checkpoints"]}
    model, soft = "field_transformer on phaedra tokens Δ=1", ", decoded expected codes"  # the experiment's pick=soft
    expected = {f"{model}{r}{soft}{copy}" for r in ("", ", present + predicted change") for copy in ("", "-2")}
    assert set(entries) == expected | {"phaedra tokens, floor Δ=1", "persistence Δ=1"}
    assert (tmp_path / "eval" / "forecast.png").is_file() and "persistence Δ=1" in (
        tmp_path / "eval" / "metrics.md"
    ).read_text()
    for entry in entries.values():
        judged = entry["metrics"]["overall"]["rel_l1"]
        assert judged["interval"][0] <= judged["value"] <= judged["interval"][1]
        assert entry["bootstrap"]["method"] == "percentile bootstrap over units, stratified by dataset"
    # the forecast against persistence on the same pairs: the difference of the two, with its paired interval
    forecast, alone = entries[model + soft]["metrics"]["overall"], entries["persistence Δ=1"]["metrics"]["overall"]
    versus = forecast["rel_l1 − persistence"]
    assert versus["value"] == pytest.approx(forecast["rel_l1"]["value"] - alone["rel_l1"]["value"], abs=1e-9)
    assert versus["interval"][0] <= versus["value"] <= versus["interval"][1]
    assert "rel_l1 − persistence" not in alone
    # persistence by hand, from the true fields of the same pairs
    module, datamodule = load_forecaster(ckpt, "test")
    truth, groups = module.evaluator.truth["test"], module.evaluator.groups
    err, ref = torch.zeros(len(groups), dtype=torch.float64), torch.zeros(len(groups), dtype=torch.float64)
    for batch in datamodule.test_dataloader():
        present, future = truth[batch["src"]].double(), truth[batch["dst"]].double()
        err.index_add_(0, batch["variable"], (present - future).abs().sum((1, 2, 3)))
        ref.index_add_(0, batch["variable"], future.abs().sum((1, 2, 3)))
    persistence = entries["persistence Δ=1"]["metrics"]
    assert persistence["overall"]["rel_l1"]["value"] == pytest.approx(100 * float(err.sum() / ref.sum()), rel=1e-5)
    for g, name in enumerate(groups):
        assert persistence["groups"][name]["rel_l1"]["value"] == pytest.approx(100 * float(err[g] / ref[g]), rel=1e-5)
    # a rollout: the Δ=1 model fed its own prediction twice, judged on the pairs 2 snapshots apart (the ids nearest
    # the expected codes: pick= judges the checkpoint another way than its run did, and the label says which)
    options = ["rollout=2", "pick=expected_code", "bootstrap.resamples=200"]
    rolled = evaluate(eval_cfg(tmp_path / "rolled", data_dir, f"ckpt={ckpt}", *options))
    labels = {e["label"]: e for e in rolled["checkpoints"]}
    model = "field_transformer on phaedra tokens Δ=2"
    assert set(labels) == {f"{model} (2 steps)", f"{model}, present + predicted change (2 steps)"} | {
        "phaedra tokens, floor Δ=2",
        "persistence Δ=2",
    }
    assert labels[f"{model} (2 steps)"]["data"]["delta"] == 2
    assert labels["persistence Δ=2"]["metrics"] != persistence
    with pytest.raises(ValueError, match=r"samples='abc': give the number of draws to average"):
        evaluate(eval_cfg(tmp_path / "bad", data_dir, f"ckpt={ckpt}", "samples=abc"))


def test_decode_weight_is_refused_where_no_field_frame_can_be_decoded():
    """model.decode_weight decodes predicted field frames: a datamodule without a token grid and tokenizer, or a
    negative or non-numeric weight, is refused by name."""
    from types import SimpleNamespace

    from lit_modules.transformer_module import TransformerModule

    def module(weight):
        return TransformerModule(transformer={}, optimizer={}, scheduler={}, decode_weight=weight)

    assert module(0.0).build_decoded_loss(SimpleNamespace()) is None
    no_grid = r"model.decode_weight=1.0 decodes predicted field frames; .*\(data=field_tokens has\)"
    with pytest.raises(ValueError, match=no_grid):
        module(1.0).build_decoded_loss(SimpleNamespace(vocab=None))
    for bad in (-1.0, "big", True):
        with pytest.raises(ValueError, match="model.decode_weight must be a number ≥ 0"):
            module(bad).build_decoded_loss(SimpleNamespace())
