"""The helpers that tests lean on judge what they claim to."""

import pytest
import torch

from tests.helpers import assert_same_ids_up_to_ties


def test_ids_may_differ_only_at_a_tie_within_the_error_bound():
    codes = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    vectors = torch.tensor([[0.5 + 1e-7, 0.0], [0.1, 0.0]])  # a tie between the codes (within 1e-6), then code 0
    reference = torch.tensor([1, 0])
    assert_same_ids_up_to_ties(torch.tensor([0, 0]), reference, vectors, codes, error=1e-6)  # the tie flipped
    with pytest.raises(AssertionError, match="1 ids differ, not near ties"):
        assert_same_ids_up_to_ties(torch.tensor([1, 1]), reference, vectors, codes, error=1e-6)
    with pytest.raises(AssertionError):  # a tie, but further from it than the error allows
        assert_same_ids_up_to_ties(torch.tensor([0, 0]), reference, vectors, codes, error=1e-9)
