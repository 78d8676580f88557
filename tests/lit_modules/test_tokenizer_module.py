import pytest
import torch
import torch.nn.functional as F

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


# ---- the optional hinge PatchGAN -------------------------------------------------------------------

SVQ = {"_target_": "tokenizers.svqvae.SVQVAE", "ch": 16, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 16,
       "codebook_size": 32, "norm_groups": 8}
IMAGES = {"_target_": "lit_modules.evaluation.ImageEvaluation"}
GAN = {"discriminator": {"_target_": "lit_modules.discriminator.PatchGAN", "in_channels": 3, "ch": 8, "n_layers": 3},
       "start_step": 0, "weight": 0.5}


def test_hinge_losses_match_a_hand_computation():
    from lit_modules.discriminator import hinge_d_loss, hinge_g_loss

    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0, 1.0])
    # relu(1 − real) = [0, 0.5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 2] -> mean 1
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * (5 / 6 + 1))
    assert float(hinge_g_loss(fake)) == pytest.approx(2 / 3)


def test_patchgan_scores_patches_and_refuses_tiny_crops():
    from lit_modules.discriminator import PatchGAN

    d = PatchGAN(3, ch=8, n_layers=3)
    assert d(torch.rand(2, 3, 64, 48)).shape == (2, 1, 6, 4)
    with pytest.raises(ValueError, match="H, W >= 32"):
        d(torch.rand(2, 3, 16, 64))


def test_one_backward_gives_each_model_exactly_its_own_gradient():
    torch.manual_seed(0)
    module = TokenizerModule(SVQ, OPTIM, SCHED, evaluation=IMAGES, loss_weights={"mse": 1.0}, gan=GAN)
    x = torch.rand(2, 3, 32, 32)
    module.training_step({"image": x}, 0).backward()
    got = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad()
    # the same step by hand: the tokenizer's loss with D frozen, D's hinge loss on the detached recon
    from lit_modules.discriminator import hinge_d_loss

    out = module.tokenizer(x)
    g_loss = F.mse_loss(out.recon, x) + sum(out.aux_losses.values()) - 0.5 * module.discriminator(out.recon).mean()
    tok_grads = torch.autograd.grad(g_loss, list(module.tokenizer.parameters()), allow_unused=True)
    d_params = list(module.discriminator.parameters())
    d_grads = torch.autograd.grad(hinge_d_loss(module.discriminator(x), module.discriminator(out.recon.detach())),
                                  d_params)
    for (name, _), grad in zip(module.tokenizer.named_parameters(), tok_grads, strict=True):
        if grad is not None:
            assert torch.allclose(got[f"tokenizer.{name}"], grad, atol=1e-5), name
    for (name, _), grad in zip(module.discriminator.named_parameters(), d_grads, strict=True):
        assert torch.allclose(got[f"discriminator.{name}"], grad, atol=1e-5), name
    assert all(p.requires_grad for p in d_params)


def test_gan_is_off_without_a_start_step_and_bad_settings_fail():
    assert TokenizerModule(SVQ, OPTIM, SCHED, evaluation=IMAGES, gan={**GAN, "start_step": None}).discriminator is None
    with pytest.raises(ValueError, match="start_step must be an integer >= 0"):
        TokenizerModule(SVQ, OPTIM, SCHED, evaluation=IMAGES, gan={**GAN, "start_step": -1})
    with pytest.raises(ValueError, match="start_step must be an integer >= 0 .*'soon'"):
        TokenizerModule(SVQ, OPTIM, SCHED, evaluation=IMAGES, gan={**GAN, "start_step": "soon"})
    with pytest.raises(ValueError, match="expected keys discriminator, start_step, weight, adaptive_weight"):
        TokenizerModule(SVQ, OPTIM, SCHED, evaluation=IMAGES, gan={**GAN, "lr": 1.0})


def test_adaptive_weight_balances_the_gradients_at_the_decoders_last_layer():
    torch.manual_seed(0)
    module = TokenizerModule(SVQ, OPTIM, SCHED, evaluation=IMAGES, loss_weights={"mse": 1.0},
                             gan={**GAN, "adaptive_weight": True})
    x = torch.rand(2, 3, 32, 32)
    out = module.tokenizer(x)
    terms = module.loss_terms(out.recon, x, out.aux_losses)
    adversarial = -module.discriminator(out.recon).mean()
    lam = module.adaptive_weight(terms, adversarial)
    layer = module.tokenizer.decoder.last_layer
    g_rec = torch.autograd.grad(terms["mse"], layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(lam * adversarial, layer, retain_graph=True)[0]
    assert float(g_adv.norm()) == pytest.approx(float(g_rec.norm()), rel=1e-2)  # λ·adv pulls as hard as rec
    # the codebook/commitment terms do not count as reconstruction; scaling the reconstruction scales λ
    assert float(module.adaptive_weight({**terms, "mse": 10 * terms["mse"]}, adversarial)) == pytest.approx(
        10 * float(lam), rel=1e-2)
    with pytest.raises(ValueError, match="needs a tokenizer whose .decoder has a last_layer"):
        TokenizerModule({"_target_": "tokenizers.eeg.EEGTokenizer"}, OPTIM, SCHED,
                        gan={**GAN, "adaptive_weight": True})
