"""The transformer's expected-code reconstruction loss against a hand computation."""

import numpy as np
import pytest
import torch

from lit_modules.losses import ExpectedCodeLoss
from models import Vocabulary


def test_expected_code_loss_matches_a_hand_computation():
    vocab = Vocabulary.from_streams({"amp": {"amp": 3}, "scalar": {"z": 2}})  # ids: specials 0-5, amp 6-8, z 9-10
    codes = {"amp/amp": torch.tensor([[0.0], [1.0], [5.0]]), "scalar/z": torch.tensor([[1.0, 0.0], [3.0, 2.0]])}
    loss = ExpectedCodeLoss(vocab.ranges, codes, positions=100)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 4, vocab.size, generator=g)
    targets = torch.tensor([[7, 9, 8, 0]])  # amp id 1, z id 0, amp id 2, a special (no loss)
    got = loss(logits, targets)

    def standardized(c):
        c = c.numpy().astype(np.float64)
        return (c - c.mean(0)) / c.std(0, ddof=1)

    amp, z = standardized(codes["amp/amp"]), standardized(codes["scalar/z"])
    lg = logits[0].double().numpy()

    def expected(row, lo, hi, table):
        e = np.exp(lg[row, lo:hi] - lg[row, lo:hi].max())
        return (e / e.sum()) @ table

    amp_loss = np.mean([(expected(0, 6, 9, amp) - amp[1]) ** 2, (expected(2, 6, 9, amp) - amp[2]) ** 2])
    z_loss = np.mean((expected(1, 9, 11, z) - z[0]) ** 2)
    assert got["amp/amp"].item() == pytest.approx(amp_loss, rel=1e-5)
    assert got["scalar/z"].item() == pytest.approx(z_loss, rel=1e-5)


def test_a_confident_right_prediction_costs_nothing_and_a_far_wrong_one_costs_more_than_a_near_one():
    vocab = Vocabulary.from_streams({"amp": {"amp": 3}})
    loss = ExpectedCodeLoss(vocab.ranges, {"amp/amp": torch.tensor([[0.0], [1.0], [5.0]])})
    target = torch.tensor([[6]])  # amp id 0

    def confident(local):
        logits = torch.full((1, 1, vocab.size), -1e4)
        logits[0, 0, 6 + local] = 1e4
        return loss(logits, target)["amp/amp"].item()

    assert confident(0) == pytest.approx(0.0, abs=1e-12)
    assert confident(2) > confident(1) > 0


def test_code_vectors_that_do_not_fit_the_vocabulary_are_refused():
    vocab = Vocabulary.from_streams({"amp": {"amp": 3}})
    with pytest.raises(ValueError, match=r"amp/amp has 3 ids but code vectors \(4, 1\)"):
        ExpectedCodeLoss(vocab.ranges, {"amp/amp": torch.zeros(4, 1)})
    with pytest.raises(KeyError, match="no vocabulary range 'image/image'"):
        ExpectedCodeLoss(vocab.ranges, {"image/image": torch.zeros(3, 1)})
