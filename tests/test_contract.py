"""The Tokenizer contract (tokenizers/base.py), checked for every experiment found in conf/experiment/.

A new tokenizer is covered by adding its module, model config and experiment config: nothing here names one.
CPU-sized experiments are trained for a few steps (train.py, debug=fast) and checked through their checkpoint;
paper-sized ones are built on the meta device and checked for shapes and dtypes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate

from tests.helpers import EXPERIMENTS, ROOT, compose_cfg, cpu_experiments, describe, f32_tolerance, layer_depth
from tokenizers import check_tokenizer, load_tokenizer


def example_input(datamodule, n: int = 4):
    """n validation samples of a set-up datamodule, unpacked by its adapter: (x, cond, target)."""
    return datamodule.adapter.unpack(datamodule.example_batch(n))


def check_token_shapes(tokenizer, tokens: dict[str, torch.Tensor], batch: int) -> None:
    assert set(tokens) == set(tokenizer.streams)
    for name, ids in tokens.items():
        assert ids.dtype == torch.int64, name
        assert ids.shape[0] == batch, name


def check_code_vectors(tokenizer) -> None:
    for name, size in tokenizer.streams.items():
        vectors = tokenizer.code_vectors(name)
        assert vectors.ndim == 2 and vectors.shape[0] == size and vectors.shape[1] >= 1, (name, vectors.shape)
        if vectors.device.type != "meta":
            assert torch.isfinite(vectors).all(), name
            assert len(torch.unique(vectors, dim=0)) == size, f"{name}: two ids stand for the same vector"
    with pytest.raises(KeyError):
        tokenizer.code_vectors("no-such-stream")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_tokenizer_contract(experiment, experiment_run, tmp_path, data_dir):
    if not describe(experiment)["tokenizer"]:
        pytest.skip(f"{experiment} trains no tokenizer")
    if not describe(experiment)["cpu"]:  # with this test's data dir: its data is built for the example input
        return check_on_the_meta_device(compose_cfg([f"experiment={experiment}", "debug=fast"], tmp_path, data_dir))
    run = experiment_run(experiment)
    datamodule = run.datamodule
    example = example_input(datamodule)
    tokenizer = load_tokenizer(run.last_ckpt)
    check_tokenizer(tokenizer)
    assert not tokenizer.training
    x, cond = example.x, example.cond
    with torch.no_grad():
        out = tokenizer(x, **cond)
        tokens = tokenizer.encode(x, **cond)
        recon = tokenizer.decode(tokens, **cond)
    assert out.recon.shape == recon.shape == example.target.shape
    check_token_shapes(tokenizer, tokens, len(x))
    for name, ids in tokens.items():
        assert 0 <= int(ids.min()) and int(ids.max()) < tokenizer.streams[name], name
        assert torch.equal(ids, out.tokens[name]), name  # encode is forward's quantization
    assert (recon - out.recon).abs().max() <= f32_tolerance(out.recon, layer_depth(tokenizer))
    check_code_vectors(tokenizer)
    bad = x[None]  # one axis too many
    with pytest.raises(ValueError, match=str(tuple(bad.shape)).replace("(", r"\(").replace(")", r"\)")):
        tokenizer(bad, **cond)
    # the checkpoint holds the EMA/final weights and the data's metadata, exactly
    ckpt = torch.load(run.last_ckpt, weights_only=True)
    for name, value in tokenizer.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"]["tokenizer." + name]), name
    assert tokenizer.metadata == datamodule.metadata


def check_on_the_meta_device(cfg) -> None:
    # released weights (model.init_from) are not in the repository: the architecture is checked without them
    # (tests/test_configs.py: it is the released one; tests/test_released_train.py: runs that start from weights)
    if cfg.model.get("init_from") is not None:
        cfg.model.init_from = None
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    example = example_input(datamodule, n=2)
    with torch.device("meta"):
        module = instantiate(cfg.model, optimizer=cfg.optimizer, scheduler=cfg.scheduler, _recursive_=False)
    tokenizer = module.tokenizer.eval()
    x = example.x.to("meta")
    cond = {k: v.to("meta") for k, v in example.cond.items()}
    out = tokenizer(x, **cond)
    tokens = tokenizer.encode(x, **cond)
    assert out.recon.shape == tokenizer.decode(tokens, **cond).shape == example.target.shape
    check_token_shapes(tokenizer, tokens, len(x))
    assert {k: v.shape for k, v in tokens.items()} == {k: v.shape for k, v in out.tokens.items()}
    check_code_vectors(tokenizer)


PLAIN_PYTHON = """
import json, sys, torch
from tokenizers import load_tokenizer
results = []
for ckpt, example_path, relative in json.loads(sys.argv[1]):
    tokenizer = load_tokenizer(ckpt)
    example = torch.load(example_path, weights_only=True)
    with torch.no_grad():
        recon = tokenizer.decode(tokenizer.encode(example["x"], **example["cond"]), **example["cond"])
        forward = tokenizer(example["x"], **example["cond"]).recon
    assert (recon - forward).abs().max() <= relative * forward.abs().max(), ckpt
    results.append(tokenizer.metadata.to_dict())
assert not {"lightning", "hydra", "omegaconf"} & set(sys.modules), "imported Lightning/Hydra"
print(json.dumps(results))
"""


def test_load_tokenizer_in_plain_python(experiment_run, tmp_path):
    """A user's script: load_tokenizer, encode, decode — with neither Hydra nor Lightning imported — for the
    checkpoint of every CPU-sized experiment (one Python process for all of them)."""
    jobs, expected = [], []
    for experiment in cpu_experiments():
        run = experiment_run(experiment)
        datamodule = run.datamodule
        example = example_input(datamodule)
        torch.save({"x": example.x, "cond": example.cond}, tmp_path / f"{experiment}.pt")
        relative = f32_tolerance(torch.ones(1), layer_depth(load_tokenizer(run.last_ckpt)))
        jobs.append((str(run.last_ckpt), str(tmp_path / f"{experiment}.pt"), relative))
        expected.append(datamodule.metadata.to_dict())
    assert jobs
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_PYTHON, json.dumps(jobs)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected
