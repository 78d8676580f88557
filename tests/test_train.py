"""End-to-end runs of train.py through the Compose API: few-step runs, W&B contents, resume, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger

from tests.conftest import ROOT, TINY_DATA
from tokenizers import load_tokenizer
from train import train


def run(make_cfg, overrides: list[str], output_dir: Path):
    """train() on `overrides` + debug=fast, on the tiny embedded field set for field experiments."""
    other_data = any(o.startswith(("data=", "experiment=eeg", "experiment=svqvae")) for o in overrides)
    tiny = [] if other_data else TINY_DATA
    cfg = make_cfg(["debug=fast", *tiny, *overrides], output_dir=output_dir)
    return cfg, train(cfg)


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of the run's offline .wandb log, read back with `wandb leet inspect --json`."""
    wandb_dir = next((run_dir / "wandb").glob("offline-run-*"))
    out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(wandb_dir)],
                         capture_output=True, text=True, check=True, timeout=120)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def phaedra_run(tmp_path_factory, data_dir):
    from tests.conftest import compose_cfg

    out = tmp_path_factory.mktemp("phaedra_run")
    cfg = compose_cfg(["experiment=phaedra", "debug=fast", *TINY_DATA], out, data_dir)
    value = train(cfg)
    return out, value


def test_phaedra_run_leaves_checkpoints_and_returns_the_metric(phaedra_run):
    out, value = phaedra_run
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(c.startswith("step") for c in ckpts)
    assert isinstance(value, float) and np.isfinite(value)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)  # plain hyperparameters only
    assert ckpt["normalization"]["variables"][0] == "navier_stokes/vorticity"
    assert (out / "config_resolved.yaml").is_file()


def test_wandb_offline_run_holds_metrics_and_media(phaedra_run):
    out, _ = phaedra_run
    history = {}
    for r in wandb_records(out):
        if r.get("type") == "history":
            history.update(r["history"]["item"])
    for key in ("val/psnr", "val/ssim", "val/nrmse", "val/usage/morph", "val/usage/amp", "val/perplexity/morph",
                "val/entropy_bits/amp", "val/nrmse/navier_stokes/vorticity", "val/psnr/gray_scott/v",
                "val/usage/morph/gray_scott/u",
                "train/loss", "perf/samples_per_s", "test/nrmse"):
        assert isinstance(history.get(key), float), key
    assert 0 <= history["val/usage/amp"] <= 100
    # media are flattened into '<key>.<field>' entries
    assert history["val/reconstructions._type"] == "image-file"
    assert history["val/codebook_histogram/morph._type"] == "histogram"
    assert history["val/codebook_histogram/amp._type"] == "histogram"


def test_load_tokenizer_gives_a_ready_eval_tokenizer(phaedra_run):
    out, _ = phaedra_run
    tok = load_tokenizer(out / "checkpoints" / "last.ckpt")
    assert not tok.training and tok.normalization["std"][0] > 0
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        tokens = tok.encode(x)
        assert torch.equal(tok.decode(tokens), tok(x).recon)
    assert tokens["morph"].shape == tokens["amp"].shape == (2, 8, 8) and tokens["amp"].dtype == torch.int64
    # the exported weights are the EMA weights stored as the checkpoint's state_dict
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    name = "encoder.conv_in.weight"
    assert torch.equal(tok.state_dict()[name], ckpt["state_dict"]["tokenizer." + name])
    assert not torch.equal(ckpt["state_dict"]["tokenizer." + name], ckpt["current_model_state"]["tokenizer." + name])


def test_load_tokenizer_in_a_plain_python_session(phaedra_run):
    out, _ = phaedra_run
    code = (
        "import torch; from tokenizers import load_tokenizer\n"
        f"t = load_tokenizer({str(out / 'checkpoints' / 'last.ckpt')!r})\n"
        "x = torch.randn(1, 1, 32, 64)\n"
        "with torch.no_grad(): assert torch.equal(t.decode(t.encode(x)), t(x).recon)\n"
        "import sys; assert 'lightning' not in sys.modules and 'hydra' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_fsq_experiment_runs(make_cfg, tmp_path):
    _, value = run(make_cfg, ["experiment=fsq"], tmp_path / "fsq")
    assert np.isfinite(value)
    tok = load_tokenizer(tmp_path / "fsq" / "checkpoints" / "last.ckpt")
    assert tok.streams == {"morph": 8640}


@pytest.mark.parametrize("experiment", ["eeg", "eeg_snake", "eeg_film"])
def test_eeg_experiments_run_and_log_signal_metrics(make_cfg, tmp_path, experiment):
    # two validation batches of 4096 patches reach every rate (val patches are ordered by recording and rate)
    _, value = run(make_cfg, [f"experiment={experiment}", "data.eval_batch_size=4096"], tmp_path / experiment)
    assert np.isfinite(value)
    history = {}
    for r in wandb_records(tmp_path / experiment):
        if r.get("type") == "history":
            history.update(r["history"]["item"])
    for key in ("val/mse", "val/mae", "val/psnr", "val/ssim", "val/snr_db", "val/pearson", "val/psd_err/alpha",
                "val/usage/tokens", "val/perplexity/tokens", "val/entropy_bits/tokens", "test/pearson"):
        assert isinstance(history.get(key), float), key
    assert history["val/reconstructions._type"] == "image-file"
    if experiment == "eeg_film":  # several rates: every metric per rate too
        for key in ("val/mse/128hz", "val/pearson/512hz", "val/usage/tokens/256hz", "val/perplexity/tokens/128hz"):
            assert isinstance(history.get(key), float), key
    tok = load_tokenizer(tmp_path / experiment / "checkpoints" / "last.ckpt")
    x, rate = torch.randn(3, 32), torch.tensor([128.0, 256.0, 512.0])
    with torch.no_grad():
        assert torch.equal(tok.decode(tok.encode(x, sfreq=rate), sfreq=rate), tok(x, sfreq=rate).recon)


def test_svqvae_run_and_large_image_command(make_cfg, tmp_path):
    from encode_image import encode_image

    # the hinge PatchGAN switches on at optimizer step 3 of 6
    _, value = run(make_cfg, ["experiment=svqvae", "model.gan.start_step=3"], tmp_path / "svqvae")
    assert np.isfinite(value)
    history, disc_steps, gan_steps = {}, set(), set()
    for r in wandb_records(tmp_path / "svqvae"):
        if r.get("type") == "history":
            row = r["history"]["item"]
            history.update(row)
            if "train/disc/loss" in row:
                assert {"train/disc/logits_real", "train/disc/logits_fake"} <= set(row)
                disc_steps.add(row["trainer/global_step"])
            if "train/gan" in row:
                gan_steps.add(row["trainer/global_step"])
    assert disc_steps == gan_steps == {3, 4, 5}  # logged before each step's update: steps 3, 4, 5 trained with it
    assert isinstance(history.get("val/disc/logits_real"), float)
    ckpt = torch.load(tmp_path / "svqvae" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6  # the discriminator's updates do not count as extra steps
    disc_group = ckpt["optimizer_states"][0]["param_groups"][1]
    assert disc_group["name"] == "discriminator"
    assert all(ckpt["optimizer_states"][0]["state"][i]["step"] == 3 for i in disc_group["params"])
    for key in ("val/psnr", "val/ssim", "val/usage/tokens", "val/perplexity/tokens", "train/codebook",
                "train/commitment"):
        assert isinstance(history.get(key), float), key
    assert history["val/reconstructions._type"] == "image-file"
    image = tmp_path / "big.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((150, 230, 3)) * 255).astype(np.uint8)).save(image)
    out = encode_image(tmp_path / "svqvae" / "checkpoints" / "last.ckpt", image, tile=64, overlap=16,
                       scales=(0.25, 0.5, 1.0))
    assert Image.open(out / "recon_1.png").size == (230, 150) and Image.open(out / "recon_0.25.png").size == (58, 38)
    assert np.load(out / "tokens_1.npy").shape == (19, 29)  # ceil(150/8) × ceil(230/8)
    meta = json.loads((out / "meta.json").read_text())
    assert set(meta["scales"]) == {"0.25", "0.5", "1"}
    assert (meta["tile"], meta["overlap"]) == (64, 16)


def test_paper_experiment_trains_two_steps(make_cfg, tmp_path):
    """The 97.8M-parameter recipe end to end, on tiny 32×32 fields so it fits a CPU test."""
    _, value = run(make_cfg, ["experiment=phaedra_paper", "logger=none", "trainer.max_steps=2",
                              "trainer.val_check_interval=2", "data.batch_size=2"], tmp_path / "paper")
    assert np.isfinite(value)
    ckpt = torch.load(tmp_path / "paper" / "checkpoints" / "last.ckpt", weights_only=True)
    n_params = sum(v.numel() for k, v in ckpt["state_dict"].items() if k.endswith((".weight", ".bias")))
    assert n_params / 1e6 == pytest.approx(97.8, abs=0.1)


@pytest.mark.parametrize(("experiment", "extra"), [
    ("phaedra", ["callbacks.ema.decay=0.9", "optimizer.lr=1e-3"]),  # with EMA
    ("eeg_film", []),  # random crops at three rates
    ("svqvae", ["model.gan.start_step=2"]),  # the discriminator, its parameter group and BatchNorm statistics
])
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(make_cfg, tmp_path, experiment, extra):
    # the interrupted run is the same run stopped at step 4 (mid-epoch): its schedule still spans 8 steps
    common = [f"experiment={experiment}", "logger=none", "test=false", "trainer.val_check_interval=4",
              "scheduler.total_steps=8", *extra]
    run(make_cfg, [*common, "trainer.max_steps=8"], tmp_path / "full")
    run(make_cfg, [*common, "trainer.max_steps=4"], tmp_path / "half")
    run(make_cfg, [*common, "trainer.max_steps=8", f"ckpt_path={tmp_path / 'half' / 'checkpoints' / 'last.ckpt'}"],
        tmp_path / "resumed")
    full = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    half = torch.load(tmp_path / "half" / "checkpoints" / "last.ckpt", weights_only=True)
    assert full["global_step"] == resumed["global_step"] == 8
    states = ("state_dict", "current_model_state") if "current_model_state" in full else ("state_dict",)
    for key in states:  # with EMA: the EMA weights and the raw weights
        for name, value in full[key].items():
            assert torch.equal(value, resumed[key][name]), (key, name)
    name = next(iter(full[states[-1]]))
    assert not torch.equal(half[states[-1]][name], full[states[-1]][name])


class BrokenLogger(Logger):
    """A logger whose server is unreachable: every call raises."""

    name, version = "broken", "0"

    def log_hyperparams(self, params, *args, **kwargs):
        raise ConnectionError("logging server unreachable")

    def log_metrics(self, metrics, step=None):
        raise ConnectionError("logging server unreachable")


def test_a_logger_that_fails_to_start_does_not_stop_training(make_cfg, tmp_path, caplog):
    broken = "+logger.broken._target_=tests.test_train.BrokenLogger"
    _, value = run(make_cfg, ["experiment=phaedra", "logger=none", broken], tmp_path / "run")
    assert np.isfinite(value) and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert "logger 'broken' failed to start" in caplog.text and "unreachable" in caplog.text


def test_missing_resume_checkpoint_is_an_error(make_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        run(make_cfg, ["experiment=phaedra", "logger=none", "ckpt_path=/no/such.ckpt"], tmp_path / "x")


def test_nan_in_a_user_file_stops_before_training(make_cfg, tmp_path):
    x = np.random.default_rng(0).normal(size=(6, 16, 16)).astype(np.float32)
    x[4, 2, 2] = np.inf
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(ValueError, match=r"bad\.npy.*NaN/Inf.*trajectory 4"):
        run(make_cfg, ["experiment=phaedra", "logger=none", "data=fields_npy", f"data.path={tmp_path / 'bad.npy'}"],
            tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_user_data_path_names_the_path(make_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="/no/such/fields.hdf5"):
        run(make_cfg, ["experiment=phaedra", "logger=none", "data=fields_hdf5", "data.path=/no/such/fields.hdf5"],
            tmp_path / "run")


def test_unknown_experiment_on_the_command_line():
    out = subprocess.run([sys.executable, "train.py", "experiment=nope"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0
    assert "Could not find 'experiment/nope'" in out.stderr and "phaedra" in out.stderr


def test_last_checkpoint_is_the_latest_state_even_off_the_validation_grid(make_cfg, tmp_path):
    run(make_cfg, ["experiment=fsq", "logger=none", "test=false", "trainer.max_steps=5"], tmp_path / "run")
    ckpts = tmp_path / "run" / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 5  # validations at 3 only
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step0000003.ckpt"]
