"""The transformer through train.py: astro_transformer on the token stores encode.py exports, and its data errors."""

import json

import numpy as np
import pytest
import torch

from datamodules.token_store import TokenStore
from encode import encode
from tests.helpers import describe
from tests.test_encode import encode_cfg
from tests.test_train import wandb_history
from train import train

SMALL = ["model.transformer.d_model=32", "model.transformer.n_layers=1", "model.transformer.n_heads=2"]


@pytest.fixture(scope="module")
def stores(experiment_run, tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("tokens")
    return out, encode(encode_cfg(experiment_run("astro_image").last_ckpt, out, data_dir))


def test_astro_transformer_trains_and_logs_per_modality(make_cfg, tmp_path, stores):
    store_dir, _ = stores
    cfg = make_cfg(
        ["experiment=astro_transformer", "debug=fast", f"data.store_dir={store_dir}", *SMALL],
        output_dir=tmp_path / "run",
    )
    value = train(cfg)
    assert value is not None and np.isfinite(value)
    last, _ = wandb_history(tmp_path / "run")
    expected = {"train/loss", "train/ce", "val/loss", "val/accuracy", "val/perplexity", "test/accuracy"}
    for modality in ("image", "catalog", "spectrum"):
        expected |= {f"val/accuracy/{modality}", f"val/perplexity/{modality}"}
    expected |= {"train/recon/image/image", "val/recon/spectrum/spectrum", "val/recon/catalog/redshift"}
    assert not expected - set(last), sorted(expected - set(last))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert [r["modality"] for r in ckpt["vocab"]["ranges"]][0] == "image"
    assert ckpt["hyper_parameters"]["recon_weight"] == cfg.model.recon_weight


def test_missing_stores_name_the_command_that_makes_them(make_cfg, tmp_path):
    cfg = make_cfg(["experiment=astro_transformer", "debug=fast", f"data.store_dir={tmp_path}", *SMALL])
    with pytest.raises(FileNotFoundError, match=r"python encode.py ckpt="):
        train(cfg)


def test_stores_made_with_another_tokenizer_are_refused(make_cfg, tmp_path, stores, experiment_run):
    _, paths = stores
    other = next(e for e in ("phaedra", "eeg", "svqvae") if describe(e)["cpu"])
    moved = {}
    for split, path in paths.items():
        store = TokenStore.load(path)
        store.meta["tokenizers"]["image"] = str(experiment_run(other).last_ckpt)
        moved[split] = str(store.save(tmp_path / path.name))
    (tmp_path / "latest.json").write_text(json.dumps(moved))
    cfg = make_cfg(["experiment=astro_transformer", "debug=fast", f"data.store_dir={tmp_path}", *SMALL])
    with pytest.raises(ValueError, match="expected a GalaxyImageTokenizer"):
        train(cfg)


@pytest.mark.slow
def test_transformer_resume_ends_with_the_same_weights(make_cfg, tmp_path, stores):
    store_dir, _ = stores
    common = [
        "experiment=astro_transformer",
        f"data.store_dir={store_dir}",
        *SMALL,
        "logger=none",
        "test=false",
        "trainer.val_check_interval=4",
        "scheduler.total_steps=8",
        "scheduler.warmup_steps=2",
        "data.batch_size=4",
        "model.recon_positions=8",
    ]  # few positions: the sampling matters
    train(make_cfg([*common, "trainer.max_steps=8"], output_dir=tmp_path / "full"))
    train(make_cfg([*common, "trainer.max_steps=4"], output_dir=tmp_path / "half"))
    half = tmp_path / "half" / "checkpoints" / "last.ckpt"
    train(make_cfg([*common, "trainer.max_steps=8", f"ckpt_path={half}"], output_dir=tmp_path / "resumed"))
    full = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert full["global_step"] == resumed["global_step"] == 8
    for name, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
