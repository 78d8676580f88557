"""experiment=field_fno, the pixel-space baseline of field_transformer: the same pairs from the same store, judged with
the same metrics under the same names, through train.py."""

import json
import shutil

import pytest
import torch
from torch import nn

from datamodules.field_pairs import FieldPairDataModule
from lit_modules.operator_module import OperatorModule, PixelForecast
from models.operators import FieldOperator
from tests.datamodules.test_tokens import token_datamodule
from tests.helpers import EPS32, assert_same_final_weights
from tokenizers.load import UnsafeTargetError
from train import train


@pytest.fixture(scope="module")
def pairs(token_store, data_dir, tmp_path_factory):
    store = token_store("phaedra")
    return token_datamodule("field_fno", store, data_dir, tmp_path_factory.mktemp("fno")), store


def rel_l1(pred, target):
    return 100 * (pred.double() - target.double()).abs().sum() / target.double().abs().sum()


def test_the_pairs_are_the_field_transformers(pairs, data_dir, tmp_path):
    dm, store = pairs
    tokens = token_datamodule("field_transformer", store, data_dir, tmp_path)
    for split in ("train", "val", "test"):
        ours, theirs = dm.splits[split].tensors, tokens.splits[split].tensors
        for key in ("src", "dst", "variable"):  # the same pairs in the same order
            assert torch.equal(ours[key], theirs[key]), (split, key)
    # the fields are the evaluator's true fields, standardized with the store's statistics
    truth, mean, std = (dm.evaluation_inputs()[k] for k in ("truth", "mean", "std"))
    batch = dm.splits["val"].__getitems__(list(range(len(dm.splits["val"]))))
    var = batch["variable"]
    m, s = mean[var][:, None, None, None], std[var][:, None, None, None]
    for key, rows in (("x", batch["src"]), ("y", batch["dst"])):
        field = truth["val"][rows]
        bound = 4 * EPS32 * (field.abs() + m.abs() + s * batch[key].abs())  # (x − μ)/σ·σ + μ in float32
        assert ((batch[key] * s + m - field).abs() <= bound).all(), key
    assert list(dm.variables) == tokens.evaluation_inputs()["groups"]


def test_persistence_is_the_present_field_and_the_forecast_is_in_physical_units(pairs):
    dm, _ = pairs
    ev = PixelForecast(**dm.evaluation_inputs())
    batch = dm.splits["val"].__getitems__(list(range(len(dm.splits["val"]))))
    future, present = ev.truth["val"][batch["dst"]], ev.truth["val"][batch["src"]]
    metrics = nn.ModuleDict(ev.metrics())
    oracle = lambda x, variable: batch["y"]  # noqa: E731 - predicts the true (normalized) future
    ev.update(oracle, batch, metrics, "val")
    persistence, forecast = metrics["persistence"].compute(), metrics["forecast"].compute()
    assert persistence["rel_l1"].item() == pytest.approx(rel_l1(present, future).item(), rel=1e-9)
    err = (present.double() - future.double()) / ev.std[batch["variable"]].double()[:, None, None, None]
    assert persistence["nrmse"].item() == pytest.approx(100 * err.pow(2).mean().sqrt().item(), rel=1e-9)
    # the oracle's forecast de-normalized with the store's statistics is the true future up to float32 rounding
    mean = ev.mean[batch["variable"]].abs()[:, None, None, None]
    bound = 100 * 8 * EPS32 * (future.abs() + mean).sum() / future.abs().sum()
    assert forecast["rel_l1"].item() <= bound.item()
    # a group given replaces the variable: one group holds every pair
    metrics = nn.ModuleDict(ev.metrics(groups=1))
    ev.update(oracle, batch, metrics, "val", group=torch.zeros_like(batch["variable"]))
    (one,) = metrics["persistence"].compute_groups()
    assert one["rel_l1"].item() == pytest.approx(persistence["rel_l1"].item(), rel=1e-12)
    # a rollout applies the operator to its own forecast
    metrics = nn.ModuleDict(ev.metrics())
    ev.update(lambda x, variable: x + 1, batch, metrics, "val", steps=2)
    var = batch["variable"]
    two = (batch["x"] + 2) * ev.std[var][:, None, None, None] + ev.mean[var][:, None, None, None]
    assert metrics["forecast"].compute()["rel_l1"].item() == pytest.approx(rel_l1(two, future).item(), rel=1e-9)
    # the operator starts at persistence: its residual is zero at init
    net = FieldOperator(len(dm.variables))
    assert torch.equal(net(batch["x"], batch["variable"]), batch["x"])


def test_a_debug_run_logs_the_transformers_names_and_its_checkpoint_loads(make_cfg, tmp_path, pairs):
    _, store = pairs
    cfg = make_cfg(["experiment=field_fno", "debug=fast", f"data.store={store}", "logger=none"], tmp_path / "run")
    value = train(cfg)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "completed" and value == pytest.approx(record["value"])
    names = set(record["metrics"])
    for stage in ("val", "test"):
        for name in ("forecast", "persistence"):
            assert {f"{stage}/{name}/rel_l1", f"{stage}/{name}/nrmse", f"{stage}/{name}/rel_l1/gray_scott/u"} <= names
        assert f"{stage}/loss" in names
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    module = OperatorModule.load_from_checkpoint(last)  # names only SciTok classes: on the allowlist
    saved = torch.load(last, weights_only=True)
    assert saved["hyper_parameters"]["operator"]["_target_"] == "models.operators.FieldOperator"
    for name, value in module.state_dict().items():
        assert torch.equal(value, saved["state_dict"][name]), name
    # a checkpoint that names the library's class (or anything off the allowlist) is refused before it is built
    saved["hyper_parameters"]["operator"]["_target_"] = "neuralop.models.FNO"
    torch.save(saved, tmp_path / "foreign.ckpt")
    with pytest.raises(UnsafeTargetError, match="neuralop.models.FNO"):
        OperatorModule.load_from_checkpoint(tmp_path / "foreign.ckpt")


def test_resume_ends_with_the_same_weights(make_cfg, tmp_path, pairs):
    _, store = pairs
    common = [
        "experiment=field_fno",
        f"data.store={store}",
        "model.operator.hidden_channels=8",
        "model.operator.n_layers=2",
        "logger=none",
        "test=false",
        "trainer.val_check_interval=4",
        "scheduler.total_steps=12",
        "scheduler.warmup_steps=2",
        "data.batch_size=4",
    ]
    # resumed at step 8, mid-epoch, the run crosses into epoch 1 (the (seed, epoch) order). The half run stops at a
    # validation step: there its last.ckpt is written mid-epoch.
    batches = len(pairs[0].splits["train"]) // 4
    assert 8 < batches < 12, f"{batches} train batches per epoch: the test needs a resume mid-epoch, then a new epoch"
    train(make_cfg([*common, "trainer.max_steps=12"], output_dir=tmp_path / "full"))
    train(make_cfg([*common, "trainer.max_steps=8"], output_dir=tmp_path / "half"))
    half = tmp_path / "half" / "checkpoints" / "last.ckpt"
    train(make_cfg([*common, "trainer.max_steps=12", f"ckpt_path={half}"], output_dir=tmp_path / "resumed"))
    assert_same_final_weights(tmp_path / "full", tmp_path / "resumed", 12)


def test_a_store_of_eeg_tokens_is_refused_by_name(pairs, tmp_path):
    _, store = pairs
    eeg = tmp_path / "eeg_store"  # the kind as an EEG tokenizer's store records it (open_store checks meta.json)
    shutil.copytree(store, eeg)
    for split in ("train", "val", "test"):
        meta = json.loads((eeg / split / "meta.json").read_text())
        meta["kind"], meta["tokenizer"]["class"] = "eeg", "EEGTokenizer"
        (eeg / split / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"a store of EEGTokenizer tokens of eeg data; .* tokens of fields data"):
        FieldPairDataModule(store=str(eeg)).setup()
