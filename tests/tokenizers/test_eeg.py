import math

import pytest
import torch

from tokenizers.eeg import EEGTokenizer, Snake, rate_features


def test_snake_values_and_gradients_match_a_hand_computation():
    snake = Snake(3)
    with torch.no_grad():
        snake.log_alpha.copy_(torch.tensor([0.0, math.log(2.0), math.log(0.5)]))
    x = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float32, requires_grad=True)
    y = snake(x)
    alpha = [1.0, 2.0, 0.5]
    for i, a in enumerate(alpha):
        xi = float(x.detach()[0, i])
        assert float(y[0, i]) == pytest.approx(xi + math.sin(a * xi) ** 2 / a, rel=1e-6)
    y.sum().backward()
    for i, a in enumerate(alpha):
        xi = float(x.detach()[0, i])
        assert float(x.grad[0, i]) == pytest.approx(1 + math.sin(2 * a * xi), rel=1e-5)  # d/dx
        d_alpha = xi * math.sin(2 * a * xi) / a - math.sin(a * xi) ** 2 / a**2
        assert float(snake.log_alpha.grad[i]) == pytest.approx(a * d_alpha, rel=1e-5)  # d/d(log α)


def test_snake_never_divides_by_zero():
    snake = Snake(2)
    with torch.no_grad():
        snake.log_alpha.fill_(-200.0)  # exp underflows to 0 in fp32
    x = torch.randn(5, 2, requires_grad=True)
    y = snake(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and torch.isfinite(snake.log_alpha.grad).all()
    assert torch.allclose(y, x, atol=1e-4)  # sin²(αx)/α -> αx² -> 0


def test_film_is_the_identity_at_init():
    torch.manual_seed(0)
    plain = EEGTokenizer(patch_len=64, hidden_dims=[32, 16], activation="snake").eval()
    film = EEGTokenizer(patch_len=64, hidden_dims=[32, 16], activation="snake", use_conditioning=True).eval()
    film.load_state_dict(plain.state_dict(), strict=False)  # same shared weights; FiLM layers stay at zero
    x = torch.randn(4, 64)
    with torch.no_grad():
        for rate in (128.0, 256.0, 1000.0):
            out = film(x, sfreq=torch.full((4,), rate))
            assert torch.equal(out.recon, plain(x).recon)


def test_rate_embedding_separates_octaves():
    f = rate_features(torch.tensor([128.0, 256.0, 256.0]), 16, 64.0, 2048.0)
    assert f.shape == (3, 16)
    assert torch.equal(f[1], f[2])
    assert (f[0] - f[1]).norm() > 0.5


def test_conditioning_without_a_rate_is_a_clear_error():
    model = EEGTokenizer(patch_len=64, hidden_dims=[32], use_conditioning=True)
    with pytest.raises(ValueError, match="sfreq"):
        model(torch.randn(2, 64))


def test_token_round_trip_shapes_and_wrong_patch_length():
    model = EEGTokenizer(patch_len=128, hidden_dims=[64, 32], activation="gelu", use_conditioning=True).eval()
    assert model.streams == {"tokens": 64000}
    assert model.code_vectors("tokens").shape == (64000, 6)
    x, rate = torch.randn(5, 128), torch.tensor([128.0, 256.0, 512.0, 256.0, 128.0])
    with torch.no_grad():
        tokens = model.encode(x, sfreq=rate)
        assert tokens["tokens"].shape == (5,) and tokens["tokens"].dtype == torch.int64
        assert torch.equal(model.decode(tokens, sfreq=rate), model(x, sfreq=rate).recon)
    with pytest.raises(ValueError, match=r"\[B, 128\], got \(5, 64\)"):
        model(torch.randn(5, 64), sfreq=rate)
    with pytest.raises(ValueError, match="activation"):
        EEGTokenizer(activation="tanh")
