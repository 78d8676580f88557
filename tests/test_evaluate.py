"""evaluate.py: every tokenizer experiment judged on a small split (metrics.json / .csv / .md / rate_distortion.png),
point values equal to a hand computation from load_tokenizer(ckpt).decode(encode(x)), intervals that hold them, two
runs byte-identical, several checkpoints, a user's .npy it never saw, and errors that name the problem."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from datamodules.token_store import file_sha256
from evaluate import evaluate
from tests.helpers import ROOT, cpu_experiments, describe
from tokenizers import load_tokenizer, save_tokenizer
from tokenizers.astro import ScalarQuantileTokenizer
from tokenizers.base import DataMetadata

SAMPLES = 24  # max_samples of the tests: one batch
FAST = ["max_samples=24", "bootstrap.resamples=200", "batch_size=64"]


def eval_cfg(out_dir, data_dir, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="evaluate",
            overrides=[f"out_dir={out_dir}", f"paths.data_dir={data_dir}", f"paths.output_dir={out_dir}", *overrides],
        )


def hand_error(kind: str, recon: torch.Tensor, batch: dict) -> tuple[str, float]:
    """One metric of each kind from its definition (lit_modules/metrics.py), in float64: fields rel_l1 in physical
    units, EEG and images mse, galaxies rel_l1 on the normalized image."""
    recon = recon.double()
    if kind == "fields":
        std, mean = batch["field_variables_in_std"].double(), batch["field_variables_in_mean"].double()
        phys, target = recon * std[..., None, None] + mean[..., None, None], batch["field_variables_out"].double()
        return "rel_l1", float(100 * (phys - target).abs().sum() / target.abs().sum())
    if kind == "eeg":
        return "mse", float((recon - batch["x"].double()).pow(2).mean())
    if kind == "images":
        return "mse", float((recon - batch["image"].double()).pow(2).mean())
    target = batch["image"].double()
    return "rel_l1", float(100 * (recon - target).abs().sum() / target.abs().sum())


@pytest.mark.parametrize("experiment", cpu_experiments())
def test_every_tokenizer_is_judged(experiment, experiment_run, tmp_path, data_dir):
    run = experiment_run(experiment)
    kind = describe(experiment)["kind"]
    out = evaluate(eval_cfg(tmp_path, data_dir, f"ckpt={run.last_ckpt}", "split=val", *FAST))
    for name in ("metrics.json", "metrics.csv", "metrics.md", "rate_distortion.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    (entry,) = json.loads((tmp_path / "metrics.json").read_text())["checkpoints"]
    assert entry["label"] == experiment and entry["kind"] == kind and entry["split"] == "val"
    assert entry["sha256"] == file_sha256(run.last_ckpt) and entry["normalization"]["from"] == "checkpoint"
    dataset, _, _ = run.datamodule.encode_set("val")
    samples = min(SAMPLES, len(dataset))
    assert entry["data"]["samples"] == samples and entry["data"]["units"] >= 1
    assert set(entry["data"]["fingerprint"]) == {"val"}
    # the same rows through the tokenizer by hand, with the run's datamodule (the statistics it trained with)
    tokenizer = load_tokenizer(run.last_ckpt)
    batch = dataset.__getitems__(list(range(samples)))
    model_input = run.datamodule.adapter.unpack(batch)
    with torch.no_grad():
        tokens = tokenizer.encode(model_input.x, **model_input.cond)
        recon = tokenizer.decode(tokens, **model_input.cond)
    name, expected = hand_error(kind, recon, batch)
    judged = entry["metrics"]["overall"][name]
    assert judged["value"] == pytest.approx(expected, rel=1e-5)
    for metric, judged in entry["metrics"]["overall"].items():
        lo, hi = judged["interval"]
        if judged["value"] is not None and lo is not None:
            assert lo - 1e-9 * abs(lo) <= judged["value"] <= hi + 1e-9 * abs(hi), metric
    bits = sum(ids[0].numel() * math.log2(tokenizer.streams[s]) for s, ids in tokens.items())
    assert entry["rate"]["bits_per_value"] == pytest.approx(bits / model_input.x[0].numel(), rel=1e-12)
    assert entry["rate"]["tokens_per_sample"] == sum(ids[0].numel() for ids in tokens.values())
    assert 0 < entry["rate"]["entropy_bits_per_value"] <= entry["rate"]["bits_per_value"] + 1e-9
    assert entry["rate"]["coded_bits_per_value"] > 0
    assert set(entry["rate"]["streams"]) == set(tokenizer.streams)
    if kind == "galaxy_images":  # from tokens and from the continuous latents
        assert {"psnr", "ssim", "latent/psnr", "latent/ssim"} <= set(entry["metrics"]["overall"])
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert rows[0]["label"] == experiment and rows[0]["group"] == "all"
    assert [r["group"] for r in rows[1:]] == sorted(entry["metrics"]["groups"])
    assert out["checkpoints"][0]["label"] == experiment


def test_two_runs_are_identical_and_several_checkpoints_give_several_entries(experiment_run, tmp_path, data_dir):
    ckpts = f"ckpts=[{experiment_run('phaedra').last_ckpt},{experiment_run('fsq').last_ckpt}]"
    for name in ("a", "b"):
        evaluate(eval_cfg(tmp_path / name, data_dir, ckpts, "split=test", *FAST))
    for name in ("metrics.json", "metrics.csv", "metrics.md", "rate_distortion.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    entries = json.loads((tmp_path / "a" / "metrics.json").read_text())["checkpoints"]
    assert [e["label"] for e in entries] == ["phaedra", "fsq"]
    assert entries[0]["data"]["fingerprint"] == entries[1]["data"]["fingerprint"]  # the same test rows
    groups = entries[0]["metrics"]["groups"]
    assert groups and all("nrmse" in g for g in groups.values())  # per variable
    md = (tmp_path / "a" / "metrics.md").read_text()
    assert "| phaedra | all |" in md and "| fsq | all |" in md


def test_a_users_npy_it_never_saw(experiment_run, tmp_path, data_dir):
    """A .npy of 40 snapshots [N, H, W] of a variable the tokenizer never saw: only its own statistics can normalize
    it (normalize=data); split=all judges every snapshot."""
    run = experiment_run("phaedra")
    h = run.cfg.data.source.resolution
    gen = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.linspace(0, 2 * np.pi, h), np.linspace(0, 2 * np.pi, h), indexing="ij")
    fields = np.stack([np.sin(xx * (1 + k % 3)) * np.cos(yy) + 0.1 * gen.normal(size=(h, h)) for k in range(40)])
    path = tmp_path / "pressure.npy"
    np.save(path, (1000 + 5 * fields).astype(np.float32))
    data = ["data=fields_npy", f"data.source.path={path}", "split=all", "bootstrap.resamples=200"]
    with pytest.raises(ValueError, match="normalize=data") as e:
        evaluate(eval_cfg(tmp_path / "ckpt_stats", data_dir, f"ckpt={run.last_ckpt}", *data))
    assert "pressure" in str(e.value)
    evaluate(eval_cfg(tmp_path / "out", data_dir, f"ckpt={run.last_ckpt}", *data, "normalize=data"))
    (entry,) = json.loads((tmp_path / "out" / "metrics.json").read_text())["checkpoints"]
    assert entry["data"]["samples"] == 40 and entry["data"]["units"] == 40  # NHW: each snapshot its own unit
    assert set(entry["data"]["fingerprint"]) == {"train", "val", "test"}
    assert entry["normalization"]["from"] == "data" and entry["normalization"]["variables"] == ["pressure/pressure"]
    assert entry["normalization"]["mean"][0] == pytest.approx(1000, abs=2)
    nrmse = entry["metrics"]["overall"]["nrmse"]
    lo, hi = nrmse["interval"]
    assert lo <= nrmse["value"] <= hi and lo < hi


def test_bad_input_is_named(experiment_run, tmp_path, data_dir, monkeypatch):
    ckpt = experiment_run("phaedra").last_ckpt

    def run(*overrides):
        return evaluate(eval_cfg(tmp_path / "out", data_dir, *overrides, *FAST))

    for overrides, match in (
        ([f"ckpt={ckpt}", "split=holdout"], "split=holdout: choose one of train, val, test, all"),
        ([f"ckpt={ckpt}", "normalize=train"], "normalize=train: choose checkpoint"),
        ([], "ckpt=<a tokenizer checkpoint> or ckpts"),
        ([f"ckpt={tmp_path / 'missing.ckpt'}"], "missing.ckpt does not exist"),
    ):
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            run(*overrides)
    junk = tmp_path / "notes.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.ckpt"):
        run(f"ckpt={junk}")
    other = tmp_path / "transformer.ckpt"  # a Lightning checkpoint without a tokenizer
    torch.save({"state_dict": {}, "hyper_parameters": {"model": {}}}, other)
    with pytest.raises(ValueError, match="transformer.ckpt is not a tokenizer checkpoint"):
        run(f"ckpt={other}")
    scalars = save_tokenizer(  # a tokenizer of a kind evaluate.py has no metrics for
        ScalarQuantileTokenizer(["mag_r"], 8),
        {"_target_": "tokenizers.astro.ScalarQuantileTokenizer", "columns": ["mag_r"], "bins": 8},
        DataMetadata(kind="galaxy_catalog", normalization="none", variables=["mag_r"]),
        tmp_path / "scalars.ckpt",
    )
    with pytest.raises(ValueError, match="scalars.ckpt .*'galaxy_catalog'"):
        run(f"ckpt={scalars}")
    with pytest.raises(ValueError, match="trained on fields data; the data config gives eeg data"):
        run(f"ckpt={ckpt}", "data=eeg")
    from datamodules.fields import FieldDataModule

    real = FieldDataModule.encode_set

    def empty(self, split):
        dataset, index, about = real(self, split)
        return torch.utils.data.Subset(dataset, []), index[:0], about

    monkeypatch.setattr(FieldDataModule, "encode_set", empty)
    with pytest.raises(ValueError, match="split=val of the data datamodules.fields.FieldDataModule has no samples"):
        run(f"ckpt={ckpt}", "split=val")


def test_a_wandb_logger_gets_the_table_and_the_plot(experiment_run, tmp_path, data_dir):
    """logger=wandb (offline in tests): one run holding the metrics table and the rate–distortion image."""
    evaluate(eval_cfg(tmp_path, data_dir, f"ckpt={experiment_run('phaedra').last_ckpt}", "logger=wandb", *FAST))
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    media = run / "files" / "media"
    assert list((media / "table" / "evaluate").glob("metrics_*.table.json"))
    assert list((media / "images" / "evaluate").glob("rate_distortion_*.png"))
