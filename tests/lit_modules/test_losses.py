"""The loss module: weighted reconstruction terms, the hinge GAN terms and VQGAN's adaptive weight."""

import pytest
import torch
import torch.nn.functional as F

from lit_modules.losses import ReconstructionLoss, hinge_d_loss, hinge_g_loss
from tokenizers.svqvae import SVQVAE

GAN = {
    "discriminator": {"_target_": "tokenizers.discriminator.PatchGAN", "in_channels": 3, "ch": 8, "n_layers": 3},
    "start_step": 0,
    "weight": 0.5,
}


def small_svqvae() -> SVQVAE:
    return SVQVAE(ch=16, ch_mult=[1, 2], num_res_blocks=1, z_channels=16, codebook_size=32, norm_groups=8)


def test_reconstruction_terms_are_weighted_l1_and_mse_plus_the_tokenizers_aux_losses():
    loss = ReconstructionLoss(l1=2.0, mse=0.5)
    target = torch.randn(2, 1, 8, 8)
    out = loss(target + 0.1, target, {"commitment": torch.tensor(0.3)}, step=0)
    assert float(out.terms["l1"]) == pytest.approx(0.2) and float(out.terms["mse"]) == pytest.approx(0.005)
    assert float(out.loss) == pytest.approx(0.2 + 0.005 + 0.3) and out.extras == {}
    assert set(ReconstructionLoss(l1=0.0, mse=1.0)(target, target, {}, step=0).terms) == {"mse"}


def test_bad_weights_and_gan_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="at least one > 0"):
        ReconstructionLoss(l1=0.0, mse=0.0)
    with pytest.raises(ValueError, match=">= 0"):
        ReconstructionLoss(l1=-1.0)
    assert ReconstructionLoss(gan={**GAN, "start_step": None}).discriminator is None
    with pytest.raises(ValueError, match="start_step must be an integer >= 0"):
        ReconstructionLoss(gan={**GAN, "start_step": -1})
    with pytest.raises(ValueError, match="start_step must be an integer >= 0 .*'soon'"):
        ReconstructionLoss(gan={**GAN, "start_step": "soon"})
    with pytest.raises(ValueError, match="expected keys adaptive_weight, discriminator, start_step, weight"):
        ReconstructionLoss(gan={**GAN, "lr": 1.0})


def test_hinge_losses_match_a_hand_computation():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0, 1.0])
    # relu(1 − real) = [0, 0.5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 2] -> mean 1
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * (5 / 6 + 1))
    assert float(hinge_g_loss(fake)) == pytest.approx(2 / 3)


def test_gan_terms_start_at_their_step_and_evaluation_only_reports_logits():
    loss = ReconstructionLoss(l1=0.0, mse=1.0, gan={**GAN, "start_step": 5})
    x = torch.rand(2, 3, 32, 32)
    assert set(loss(x * 0.9, x, {}, step=4).terms) == {"mse"}
    assert set(loss(x * 0.9, x, {}, step=5).terms) == {"mse", "gan"}
    evaluation = loss(x * 0.9, x, {}, step=5, train=False)
    assert set(evaluation.terms) == {"mse"} and set(evaluation.extras) == {"disc/logits_real", "disc/logits_fake"}


def test_one_backward_gives_each_model_exactly_its_own_gradient():
    torch.manual_seed(0)
    tokenizer, loss = small_svqvae(), ReconstructionLoss(l1=0.0, mse=1.0, gan=GAN)
    x = torch.rand(2, 3, 32, 32)
    out = tokenizer(x)
    loss(out.recon, x, out.aux_losses, step=0).loss.backward()
    params = list(tokenizer.parameters()) + list(loss.discriminator.parameters())
    got = [None if p.grad is None else p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    # the same step by hand: the tokenizer's loss with D frozen, D's hinge loss on the detached recon
    out = tokenizer(x)
    d = loss.discriminator
    g_loss = F.mse_loss(out.recon, x) + sum(out.aux_losses.values()) - 0.5 * d(out.recon).mean()
    tok_grads = torch.autograd.grad(g_loss, list(tokenizer.parameters()), allow_unused=True)
    d_grads = torch.autograd.grad(hinge_d_loss(d(x), d(out.recon.detach())), list(d.parameters()))
    for g, expected in zip(got, [*tok_grads, *d_grads], strict=True):
        assert (g is None) == (expected is None)
        if expected is not None:  # same sums in another order: float32 rounding only
            assert torch.allclose(g, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max())), g.shape
    assert all(p.requires_grad for p in d.parameters())


def test_adaptive_weight_balances_the_gradients_at_the_last_layer():
    torch.manual_seed(0)
    tokenizer = small_svqvae()
    loss = ReconstructionLoss(l1=0.0, mse=1.0, gan={**GAN, "adaptive_weight": True})
    assert loss.needs_last_layer
    x = torch.rand(2, 3, 32, 32)
    out = tokenizer(x)
    mse = F.mse_loss(out.recon, x)
    adversarial = -loss.discriminator(out.recon).mean()
    lam = loss.adaptive_weight(mse, adversarial, tokenizer.last_layer)
    g_rec = torch.autograd.grad(mse, tokenizer.last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(lam * adversarial, tokenizer.last_layer, retain_graph=True)[0]
    assert float(g_adv.norm()) == pytest.approx(float(g_rec.norm()), rel=1e-2)  # λ·adv pulls as hard as rec
    assert float(loss.adaptive_weight(10 * mse, adversarial, tokenizer.last_layer)) == pytest.approx(
        10 * float(lam), rel=1e-2
    )  # scaling the reconstruction scales λ
    # in the loss: the codebook/commitment terms do not count as reconstruction
    full = loss(out.recon, x, out.aux_losses, step=0, last_layer=tokenizer.last_layer)
    assert float(full.extras["gan_adaptive_weight"]) == pytest.approx(float(lam), rel=1e-4)


def test_decoded_field_loss_is_the_l1_between_decoded_fields_and_trains_the_logits_alone():
    """model.decode_weight: a distribution certain of some ids costs exactly the L1 between the decoded fields of
    those ids and of the true ones (decode of the token grid, cells in raster order, streams as the tokenizer has
    them); the true ids cost 0; the gradient reaches the logits and never the frozen tokenizer."""
    from lit_modules.losses import DecodedFieldLoss
    from tests.helpers import f32_tolerance, layer_depth
    from tests.tokenizers.test_phaedra import SMALL
    from tokenizers import PhaedraTokenizer

    torch.manual_seed(0)
    tokenizer = PhaedraTokenizer(**SMALL)
    B, grid = 2, (4, 4)  # SMALL downsamples 4x: a 16 x 16 field
    streams = list(tokenizer.streams)
    loss = DecodedFieldLoss(tokenizer, streams, grid)
    assert not tokenizer.training
    true = {s: torch.randint(0, n, (B, *grid)) for s, n in tokenizer.streams.items()}
    other = {s: torch.randint(0, n, (B, *grid)) for s, n in tokenizer.streams.items()}

    def certain(ids):  # logits [B·cells, V] whose softmax is exactly one-hot in float32
        return {s: (1e4 * F.one_hot(ids[s].flatten(), tokenizer.streams[s]).float()).requires_grad_() for s in streams}

    targets = {s: true[s].flatten() for s in streams}
    assert float(loss(certain(true), targets).detach()) == 0.0
    logits = certain(other)
    value = loss(logits, targets)
    with torch.no_grad():
        hand = (tokenizer.decode(other) - tokenizer.decode(true)).abs().mean()
    assert abs(float(value.detach()) - float(hand)) <= f32_tolerance(tokenizer.decode(true), layer_depth(tokenizer))
    soft = {s: torch.randn(B * 16, tokenizer.streams[s], requires_grad=True) for s in streams}
    loss(soft, targets).backward()
    assert all(soft[s].grad is not None and soft[s].grad.abs().sum() > 0 for s in streams)
    assert all(p.grad is None for p in tokenizer.parameters())
    with pytest.raises(ValueError, match="stream 'amp' needs whole frames of 16 cells"):
        loss({**soft, "amp": soft["amp"][:5]}, targets)
    with pytest.raises(TypeError, match="decodes code vectors"):
        DecodedFieldLoss(torch.nn.Linear(2, 2), streams, grid)
