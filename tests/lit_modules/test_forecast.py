"""Data-space errors of decoded predictions: with an oracle that predicts the true tokens, the forecast equals the
tokenizer's reconstruction, and both references equal a hand computation."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_modules.forecast import FieldForecast, NextPatch, PairTruth
from lit_modules.metrics import FieldErrors
from models.vocab import SPECIALS
from tests.datamodules.test_tokens import token_datamodule
from tests.helpers import f32_tolerance, layer_depth


class FieldOracle:
    """generate() returns the true sequence of the batch it is given; hidden() gives states whose logits (an identity
    head) peak at the true next token, having checked that it was given the batch's inputs (data.future_inputs=masked,
    present: no future token among them, tests/datamodules/test_tokens.py)."""

    def __init__(self, batch, vocab_size, sharpness=10.0):
        self.batch, self.vocab_size, self.sharpness, self.passes = batch, vocab_size, sharpness, 0
        self.config = SimpleNamespace(code_dim=0)

    def hidden(self, ids, types, positions=None, context=None, condition=None):
        assert torch.equal(ids, self.batch["inputs"][:, : ids.shape[1]])  # the inputs, never the targets
        assert torch.equal(condition, self.batch["variable"])  # and each pair's variable
        assert ids.shape == types.shape == positions.shape == context.shape[:2]
        self.passes += 1
        return self.sharpness * F.one_hot(self.batch["ids"][:, 1 : ids.shape[1] + 1], self.vocab_size).float()

    def output_weight(self):
        return torch.eye(self.vocab_size)

    def pick(self, logits, how):
        return logits.argmax(-1)

    def generate(self, prompt, layout, n_new, bounds=None, positions=None, context=None, pick="argmax", condition=None):
        assert torch.equal(condition, self.batch["variable"])
        assert torch.equal(prompt, self.batch["ids"][:, : prompt.shape[1]])  # only the present frame is given
        assert prompt.shape[1] + n_new == self.batch["ids"].shape[1] - 1  # the whole future frame, less EOS
        return self.batch["ids"][:, :-1]


def rel_l1(pred, target):
    return 100 * (pred.double() - target.double()).abs().sum() / target.double().abs().sum()


@pytest.mark.parametrize("future_inputs", ["present", "masked", "tokens"])
def test_field_forecast_of_the_true_tokens_is_the_tokenizer_reconstruction(
    future_inputs, experiment_run, token_store, data_dir, tmp_path
):
    from tokenizers import load_tokenizer

    ckpt = experiment_run("phaedra").last_ckpt
    store = token_store("phaedra")
    dm = token_datamodule("field_transformer", store, data_dir, tmp_path, [f"data.future_inputs={future_inputs}"])
    ev = FieldForecast(**dm.evaluation_inputs())
    batch = dm.splits["val"].__getitems__(list(range(min(8, len(dm.splits["val"])))))
    assert ("inputs" in batch) == (future_inputs != "tokens")
    if future_inputs == "masked":
        assert (batch["inputs"][:, ev.frame_len + 2 : -1] == SPECIALS.index("MASK")).all()
    metrics = nn.ModuleDict(ev.metrics())
    ev.update(FieldOracle(batch, dm.vocab.size), batch, metrics, "val")
    forecast, persistence, floor = (metrics[n].compute() for n in ("forecast", "persistence", "tokenizer"))
    for key in ("rel_l1", "nrmse", "psnr"):
        assert torch.equal(forecast[key], floor[key]), key
    future, present = ev.truth["val"][batch["dst"]], ev.truth["val"][batch["src"]]
    var = batch["variable"]
    mean, std = ev.mean[var][:, None, None, None], ev.std[var][:, None, None, None]
    assert torch.allclose(persistence["rel_l1"], rel_l1(present, future))
    tokenizer = load_tokenizer(ckpt)
    with torch.no_grad():
        recon = tokenizer((future - mean) / std).recon * std + mean
    # the floor is the tokenizer's own reconstruction of the future field, in physical units
    tol = f32_tolerance(recon, layer_depth(tokenizer))
    assert (
        tokenizer.decode(ev.to_tokens(batch["ids"][:, ev.reads.start + 1 : ev.reads.stop + 1])) * std + mean - recon
    ).abs().max() <= tol
    assert floor["rel_l1"].item() == pytest.approx(rel_l1(recon, future).item(), rel=1e-4)
    # increment: the present plus the decoded change between the present's tokens and the predicted ones
    with torch.no_grad():
        recon_present = tokenizer((present - mean) / std).recon * std + mean
    increment = metrics["increment"].compute()
    assert increment["rel_l1"].item() == pytest.approx(rel_l1(present + recon - recon_present, future).item(), rel=1e-4)


def test_field_forecast_as_the_mean_of_draws(token_store, data_dir, tmp_path):
    """model.evaluator.samples=K: the forecast is the mean of K decoded draws, from one pass over the present. Drawn
    from a certain model, every draw is the true tokens and the mean is the tokenizer's floor exactly (K a power of
    2); from an uncertain one, the draws differ, the same seed gives the same figures and another seed others."""
    store = token_store("phaedra")
    dm = token_datamodule("field_transformer", store, data_dir, tmp_path)
    batch = dm.splits["val"].__getitems__(list(range(min(8, len(dm.splits["val"])))))

    def judged(samples, sharpness, seed=0):
        ev = FieldForecast(**dm.evaluation_inputs(), samples=samples, seed=seed)
        metrics, oracle = nn.ModuleDict(ev.metrics()), FieldOracle(batch, dm.vocab.size, sharpness)
        ev.update(oracle, batch, metrics, "val")
        assert oracle.passes == 1  # K draws from the logits of one pass
        return {name: metrics[name].compute()["rel_l1"] for name in ("forecast", "tokenizer")}

    certain = judged(4, sharpness=1e4)
    assert torch.equal(certain["forecast"], certain["tokenizer"])
    # sharpness 10 leaves ~8000 · e^-10 ≈ 0.35 of the mass of a morphology token off the true id
    a, b, other = judged(2, 10.0), judged(2, 10.0), judged(2, 10.0, seed=1)
    assert torch.equal(a["forecast"], b["forecast"])
    assert not torch.equal(a["forecast"], other["forecast"])
    assert not torch.equal(a["forecast"], a["tokenizer"])
    with pytest.raises(ValueError, match="model.evaluator.samples must be an integer ≥ 0"):
        FieldForecast(**dm.evaluation_inputs(), samples=-1)


def test_field_forecast_soft_decodes_the_expected_code_vectors(token_store, data_dir, tmp_path):
    """pick="soft": no id is picked; the tokenizer decodes each cell's expected code vector under the model's
    distributions (a hand computation from the logits), from one pass; certain of the true ids, it is the floor."""
    store = token_store("phaedra")
    dm = token_datamodule("field_transformer", store, data_dir, tmp_path)
    batch = dm.splits["val"].__getitems__(list(range(min(8, len(dm.splits["val"])))))
    ev = FieldForecast(**dm.evaluation_inputs(), pick="soft")

    def judged(sharpness):
        metrics, oracle = nn.ModuleDict(ev.metrics()), FieldOracle(batch, dm.vocab.size, sharpness)
        ev.update(oracle, batch, metrics, "val")
        assert oracle.passes == 1
        return {name: metrics[name].compute()["rel_l1"] for name in ("forecast", "tokenizer")}

    certain = judged(1e4)
    assert certain["forecast"].item() == pytest.approx(certain["tokenizer"].item(), rel=1e-5)
    # uncertain: the expected code of each cell and stream from the logits, by hand
    oracle = FieldOracle(batch, dm.vocab.size, 10.0)
    logits = ev.frame_logits(oracle, batch, None)
    tokenizer, K = ev.tokenizer, len(ev.streams)
    codes = {}
    for k, s in enumerate(ev.streams):
        r = dm.vocab.range("field", s)
        p = logits[:, k::K, r.start : r.stop].softmax(-1)
        codes[s] = torch.einsum("bcv,vd->bcd", p, tokenizer.code_vectors(s).float()).view(len(p), *ev.grid, -1)
    with torch.no_grad():
        field = PairTruth(ev.truth["val"], ev.mean, ev.std, batch).physical(tokenizer.decode_codes(codes))
    future = ev.truth["val"][batch["dst"]]
    expected = FieldErrors(groups=len(ev.groups))
    var = batch["variable"]
    expected.update(field, future, ev.std[var][:, None], var, mean=ev.mean[var][:, None])
    uncertain = judged(10.0)["forecast"]
    assert uncertain.item() == pytest.approx(expected.compute()["rel_l1"].item(), rel=1e-4)
    assert uncertain.item() != pytest.approx(certain["forecast"].item(), rel=1e-3)
    with pytest.raises(ValueError, match="pick='soft' decodes the distributions of a one-pass forecast"):
        FieldForecast(**{**dm.evaluation_inputs(), "generate": True}, pick="soft")


class NearestCodeOracle(nn.Module):
    """hidden() = [2c, −1] for the code c of the true next token, head rows [c_j, |c_j|²]: the logits
    2c·c_j − |c_j|² = |c|² − |c − c_j|² peak at the true token."""

    def __init__(self, vocab, codes, batch):
        super().__init__()
        r = vocab.range("eeg")
        self.lo, self.codes, self.batch = r.start, codes, batch
        self.config = SimpleNamespace(code_dim=0)  # logits from the head (the argmax pick)
        weight = torch.zeros(vocab.size, codes.shape[1] + 1)
        weight[r.start : r.stop] = torch.cat([codes, codes.pow(2).sum(1, keepdim=True)], 1)
        self.head = nn.Linear(codes.shape[1] + 1, vocab.size, bias=False)
        self.head.weight.data = weight

    def output_weight(self, lo=0, hi=None):
        return self.head.weight[lo:hi]

    def hidden(self, ids, types, key_valid=None):
        nxt = (self.batch["ids"][:, 1:] - self.lo).clamp(0, len(self.codes) - 1)
        return torch.cat([2 * self.codes[nxt], -torch.ones(*nxt.shape, 1)], -1)


def test_next_patch_of_the_true_token_is_the_tokenizer_reconstruction(token_store, data_dir, tmp_path):
    dm = token_datamodule("eeg_transformer", token_store("eeg"), data_dir, tmp_path)
    ev = NextPatch(**dm.evaluation_inputs())
    batch = dm.splits["val"].__getitems__(list(range(min(16, len(dm.splits["val"])))))
    codes = ev.tokenizer.code_vectors("tokens").float()
    metrics = nn.ModuleDict(ev.metrics())
    ev.update(NearestCodeOracle(dm.vocab, codes, batch), batch, metrics, "val")
    forecast, persistence, floor = (metrics[n].compute() for n in ("forecast", "persistence", "tokenizer"))
    assert torch.equal(forecast["mse"], floor["mse"])
    # persistence by hand: each patch with a previous one in its sequence against that previous patch
    nxt, prev = batch["patch"][:, 1:], batch["patch"][:, :-1]
    where = (nxt >= 0) & (prev >= 0)
    patches = ev.patches["val"]
    err = patches[nxt[where]].double() - patches[prev[where]].double()
    assert persistence["mse"].item() == pytest.approx(err.pow(2).mean().item(), rel=1e-9)
