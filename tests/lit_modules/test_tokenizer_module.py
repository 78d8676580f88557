import pytest
import torch

from lit_modules.tokenizer_module import TokenizerModule

TOKENIZER = {"_target_": "tokenizers.phaedra.PhaedraTokenizer", "ch": 16, "ch_mult": [1, 2], "num_res_blocks": 1,
             "attn_resolutions": [], "resolution": 16}
OPTIM = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
SCHED = {"_target_": "lit_modules.schedulers.constant", "_partial_": True}


def batch(b: int = 2) -> dict[str, torch.Tensor]:
    raw = torch.randn(b, 1, 16, 16) * 3 + 5
    mean, std = torch.full((b, 1), 5.0), torch.full((b, 1), 3.0)
    return {"field_variables_in": (raw - 5) / 3, "field_variables_out": raw, "field_variables_in_mean": mean,
            "field_variables_in_std": std}


def test_loss_is_weighted_l1_plus_mse_on_the_normalized_target():
    module = TokenizerModule(TOKENIZER, OPTIM, SCHED, loss_weights={"l1": 2.0, "mse": 0.5})
    x, cond, target = module.evaluation["val"].unpack(batch())
    assert cond == {}
    assert torch.allclose(target, x)
    recon = target + 0.1
    terms = module.loss_terms(recon, target, {})
    assert float(terms["l1"]) == pytest.approx(0.2) and float(terms["mse"]) == pytest.approx(0.005)


def test_hyperparameters_are_plain_and_bad_weights_fail():
    module = TokenizerModule(TOKENIZER, OPTIM, SCHED)
    assert dict(module.hparams)["tokenizer"] == TOKENIZER
    with pytest.raises(ValueError, match="unknown terms"):
        TokenizerModule(TOKENIZER, OPTIM, SCHED, loss_weights={"l2": 1.0})
    with pytest.raises(ValueError, match="at least one weight"):
        TokenizerModule(TOKENIZER, OPTIM, SCHED, loss_weights={"l1": 0.0, "mse": 0.0})
