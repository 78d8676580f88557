"""The transformer through train.py: astro_transformer on the token store encode.py exports (data.store=), and its
data errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException

from datamodules.token_store import file_sha256
from encode import encode
from tests.helpers import describe
from tests.test_encode import encode_cfg
from tests.test_train import wandb_history
from train import train

SMALL = ["model.transformer.d_model=32", "model.transformer.n_layers=1", "model.transformer.n_heads=2"]


@pytest.fixture(scope="module")
def store(experiment_run, tmp_path_factory, data_dir):
    """encode.py's out_dir for the astro_image debug run: train/, val/, test/."""
    out = tmp_path_factory.mktemp("tokens")
    encode(encode_cfg(experiment_run("astro_image").last_ckpt, out, data_dir))
    return out


def test_astro_transformer_trains_and_logs_per_modality(make_cfg, tmp_path, store):
    cfg = make_cfg(
        ["experiment=astro_transformer", "debug=fast", f"data.store={store}", *SMALL],
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
    cfg = make_cfg(["experiment=astro_transformer", "debug=fast", f"data.store={tmp_path}", *SMALL])
    with pytest.raises(FileNotFoundError, match=r"python encode.py ckpt="):
        train(cfg)
    with pytest.raises(ValueError, match=r"data.store is not set: .*python train.py experiment=astro_image"):
        train(make_cfg(["experiment=astro_transformer", "debug=fast", *SMALL]))
    with pytest.raises(ConfigCompositionException):  # the split is the store's: not a key of the transformer's data
        make_cfg(["experiment=astro_transformer", "data.split=[0.6,0.2,0.2]"])


def test_stores_made_with_another_tokenizer_are_refused(make_cfg, tmp_path, store, experiment_run, token_store):
    other = next(e for e in ("phaedra", "fsq", "svqvae") if describe(e)["cpu"])
    other_ckpt = experiment_run(other).last_ckpt
    # the store of another kind of tokenizer: refused by its class and kind
    cfg = make_cfg(["experiment=astro_transformer", "debug=fast", f"data.store={token_store(other)}", *SMALL])
    with pytest.raises(ValueError, match=r"a store of \w+Tokenizer tokens of \w+ data; .* tokens of galaxy_images"):
        train(cfg)
    # a galaxy store whose image checkpoint is not a GalaxyImageTokenizer
    moved = tmp_path / "moved"
    shutil.copytree(store, moved)
    for split in ("train", "val", "test"):
        meta = json.loads((moved / split / "meta.json").read_text())
        meta["tokenizers"]["image"] = {
            "class": "GalaxyImageTokenizer",
            "checkpoint": str(other_ckpt),
            "sha256": file_sha256(other_ckpt),
        }
        (moved / split / "meta.json").write_text(json.dumps(meta))
    cfg = make_cfg(["experiment=astro_transformer", "debug=fast", f"data.store={moved}", *SMALL])
    with pytest.raises(ValueError, match="expected a GalaxyImageTokenizer"):
        train(cfg)


@pytest.mark.slow
def test_transformer_resume_ends_with_the_same_weights(make_cfg, tmp_path, store):
    common = [
        "experiment=astro_transformer",
        f"data.store={store}",
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
