"""lit_modules/evaluation.py: bootstrap intervals from per-unit sums of a GroupedSums metric, units from an index,
and the rate of tokens (bits per value from the codebook, the measured entropy and lzma), against hand computations."""

from __future__ import annotations

import lzma
import math

import numpy as np
import pytest
import torch

from datamodules.common import unit_ids
from lit_modules.evaluation import Bootstrap, TokenRate, paired, summarize
from lit_modules.metrics import GroupedSums


class Mean(GroupedSums):
    """mean = Σ total / Σ n: a ratio of sums, as every GroupedSums value."""

    sums = ("total",)
    counts = ("n",)
    seen = "n"

    def update(self, x: torch.Tensor, group: torch.Tensor) -> None:
        group = self._groups(group, len(x), x.device)
        self._add("total", group, x.double())
        self._add("n", group, torch.ones_like(group))

    @staticmethod
    def values(t):
        return {"mean": t["total"] / t["n"].double()}


def per_unit(values: list[list[float]]) -> dict[str, torch.Tensor]:
    """The states of Mean with one group per unit: unit u saw the values values[u]."""
    metric = Mean(groups=len(values))
    for u, xs in enumerate(values):
        metric.update(torch.tensor(xs, dtype=torch.float64), torch.full((len(xs),), u))
    return {"total": metric.total, "n": metric.n}


def test_two_units_give_the_extremes_of_their_resamples():
    """Units of mean 1 and 3: a resample is (1, 1), (1, 3) or (3, 3) with chance 1/4, 1/2, 1/4, so with 1000 of them
    the 2.5th percentile is the mean of (1, 1) and the 97.5th that of (3, 3)."""
    lo, hi = Bootstrap(resamples=1000, seed=0).interval(Mean.values, per_unit([[1.0], [3.0]]))["mean"]
    assert (lo, hi) == (1.0, 3.0)


def test_interval_of_a_mean_has_the_width_of_its_standard_error():
    """200 units, one value each: the percentile interval of the mean is mean ± 1.96·s/√n up to the bootstrap's own
    noise (1000 resamples: a few % of the width) and the skew of a finite sample."""
    gen = np.random.default_rng(1)
    x = gen.normal(5.0, 2.0, 200)
    states = per_unit([[v] for v in x])
    lo, hi = Bootstrap(resamples=1000, seed=3).interval(Mean.values, states)["mean"]
    half = 1.96 * x.std() / math.sqrt(len(x))
    assert lo < x.mean() < hi
    assert abs((hi - lo) / 2 - half) < 0.1 * half
    assert abs((hi + lo) / 2 - x.mean()) < 0.1 * half


def test_a_ratio_of_sums_stays_one():
    """Units of unequal size: the point value is Σ total / Σ n (not the mean of per-unit means), inside its
    interval."""
    states = per_unit([[1.0] * 9, [10.0], [2.0, 4.0]])
    judged = summarize(
        Mean.values, {k: v[:, None] for k, v in states.items()}, "n", None, Bootstrap(resamples=500, seed=0)
    )
    point, (lo, hi) = judged["overall"]["mean"]["value"], judged["overall"]["mean"]["interval"]
    assert point == pytest.approx((9 + 10 + 6) / 12, rel=1e-12)
    assert lo <= point <= hi
    assert judged["units"] == 3 and judged["groups"] == {}


def test_the_same_seed_gives_the_same_interval():
    gen = np.random.default_rng(0)
    states = per_unit([list(gen.normal(0, 1, 3)) for _ in range(30)])
    a = Bootstrap(resamples=300, seed=7).interval(Mean.values, states)
    b = Bootstrap(resamples=300, seed=7, chunk=64).interval(Mean.values, states)  # chunking changes nothing
    c = Bootstrap(resamples=300, seed=8).interval(Mean.values, states)
    assert a == b and a != c


def test_a_single_unit_gives_a_zero_width_interval():
    judged = summarize(
        Mean.values,
        {k: v[:, None] for k, v in per_unit([[2.0, 5.0]]).items()},
        "n",
        None,
        Bootstrap(resamples=50),
    )
    assert judged["overall"]["mean"] == {"value": 3.5, "interval": [3.5, 3.5]}


def test_groups_are_judged_over_the_units_that_hold_them():
    """Two metric groups: units 0, 1 hold group "a", unit 2 only group "b"; b's interval comes from unit 2 alone."""
    metric = Mean(groups=3 * 2)  # group id = unit · 2 + metric group
    metric.update(torch.tensor([1.0, 3.0, 7.0]), torch.tensor([0 * 2 + 0, 1 * 2 + 0, 2 * 2 + 1]))
    states = {"total": metric.total.view(3, 2), "n": metric.n.view(3, 2)}
    judged = summarize(Mean.values, states, "n", ["a", "b"], Bootstrap(resamples=200))
    assert judged["overall"]["mean"]["value"] == pytest.approx(11 / 3)
    assert judged["groups"]["a"]["units"] == 2 and judged["groups"]["a"]["mean"]["value"] == 2.0
    assert judged["groups"]["b"] == {"units": 1, "mean": {"value": 7.0, "interval": [7.0, 7.0]}}


def test_stratified_resamples_draw_each_stratum_from_itself():
    """Strata of 3, 1 and 2 units: every resample holds 3, 1 and 2 draws of the respective stratum's units; with one
    stratum the draws are the plain bootstrap's, draw for draw."""
    strata = np.array([0, 0, 1, 0, 2, 2])
    blocks = list(Bootstrap(resamples=250, seed=4, chunk=100).multiplicities(6, strata))
    counts = torch.cat(blocks).numpy()
    assert counts.shape == (250, 6)
    for s, size in ((0, 3), (1, 1), (2, 2)):
        assert (counts[:, strata == s].sum(1) == size).all()
    assert (counts[:, 2] == 1).all()  # a stratum of one unit is always drawn once
    assert len({tuple(row) for row in counts}) > 10  # and the others do vary
    plain = torch.cat(list(Bootstrap(resamples=250, seed=4).multiplicities(6)))
    assert torch.equal(plain, torch.cat(list(Bootstrap(resamples=250, seed=4).multiplicities(6, np.zeros(6, int)))))


def test_strata_remove_the_spread_between_strata_from_a_pooled_interval():
    """Two strata whose units differ by 100 and barely within: the pooled mean of a resample that keeps two units of
    each is the sample's own (up to the within-stratum spread); drawing units across strata makes it swing by tens."""
    states = per_unit([[0.0], [0.1], [100.0], [100.1]])
    strata = np.array([0, 0, 1, 1])
    lo, hi = Bootstrap(resamples=400, seed=0).interval(Mean.values, states, strata)["mean"]
    assert 50.0 <= lo <= hi <= 50.1
    lo, hi = Bootstrap(resamples=400, seed=0).interval(Mean.values, states)["mean"]
    assert hi - lo > 40


def test_a_paired_difference_is_judged_on_the_same_resamples():
    """B is A shifted by +1 in every unit: the difference of means is −1 in every resample (a zero-width interval),
    though each of A and B alone has a wide one; the difference of unrelated judgements is not."""
    gen = np.random.default_rng(2)
    x = gen.normal(0, 5, 40)
    a, b = per_unit([[v] for v in x]), per_unit([[v + 1.0] for v in x])
    boot = Bootstrap(resamples=300, seed=1)
    lo, hi = boot.interval(Mean.values, a)["mean"]
    assert hi - lo > 2
    two = {k: v[:, None] for k, v in a.items()}, {k: v[:, None] for k, v in b.items()}
    judged = summarize(Mean.values, two[0], "n", ["g"], boot, baseline=two[1])
    assert judged["overall"]["mean"]["value"] == pytest.approx(-1.0)
    assert judged["overall"]["mean"]["interval"] == [pytest.approx(-1.0), pytest.approx(-1.0)]
    assert judged["groups"]["g"]["mean"]["interval"] == [pytest.approx(-1.0), pytest.approx(-1.0)]
    other = per_unit([[v] for v in gen.normal(0, 5, 40)])
    lo, hi = paired(Mean.values, a, other, boot)["mean"]["interval"]
    assert hi - lo > 2


def test_unit_strata_are_one_value_per_unit():
    index = np.array([(3, 0), (3, 0), (1, 1), (3, 2)], dtype=[("dataset", "i8"), ("trajectory", "i8")])
    unit, n = unit_ids(index, ("dataset", "trajectory"))
    strata = Bootstrap(strata="dataset").unit_strata(index, unit, n)
    assert [strata[unit[i]] for i in range(4)] == [1, 1, 0, 1]  # the rank of the dataset id
    assert Bootstrap().unit_strata(index, unit, n) is None
    assert Bootstrap(strata="recording").unit_strata(index, unit, n) is None  # no such column: no strata
    by_trajectory, m = unit_ids(index, ("trajectory",))
    with pytest.raises(ValueError, match="not one value per unit"):
        Bootstrap(strata="dataset").unit_strata(index, np.zeros(4, dtype=np.int64), 1)
    assert m == 3 and by_trajectory.tolist() == [0, 0, 1, 2]


def test_unit_ids_number_rows_by_their_columns():
    index = np.zeros(5, [("dataset", "i4"), ("variable", "i4"), ("trajectory", "i8")])
    index["dataset"] = [1, 0, 1, 0, 1]
    index["trajectory"] = [4, 4, 2, 4, 4]
    index["variable"] = [0, 1, 2, 3, 4]  # not a unit column: rows of one trajectory share a unit
    ids, n = unit_ids(index, ("dataset", "trajectory"))
    assert n == 3 and ids.tolist() == [2, 0, 1, 0, 2]  # units (0,4), (1,2), (1,4) in sorted order
    with pytest.raises(ValueError, match="recording"):
        unit_ids(index, ("recording",))


def test_rate_is_the_hand_computation():
    """Two streams (vocabularies 4 and 300: uint8 and uint16 ids) of 3 and 2 tokens per sample, 8 values per sample."""
    gen = torch.Generator().manual_seed(0)
    a = [torch.randint(0, 2, (5, 3), generator=gen) for _ in range(2)]  # 2 of the 4 codes used
    b = [torch.randint(0, 300, (5, 2), generator=gen) for _ in range(2)]
    rate = TokenRate({"a": 4, "b": 300})
    for ta, tb in zip(a, b, strict=True):
        rate.update({"a": ta, "b": tb})
    out = rate.compute(values_per_sample=8)
    assert out["tokens_per_sample"] == 5
    assert out["bits_per_value"] == pytest.approx((3 * 2 + 2 * math.log2(300)) / 8)

    def entropy(ids: torch.Tensor) -> float:
        p = torch.bincount(ids.flatten()).double()
        p = p[p > 0] / p.sum()
        return float(-(p * torch.log2(p)).sum())

    ids_a, ids_b = torch.cat(a), torch.cat(b)
    assert out["entropy_bits_per_value"] == pytest.approx((3 * entropy(ids_a) + 2 * entropy(ids_b)) / 8, rel=1e-12)
    coded = len(lzma.compress(ids_a.numpy().astype(np.uint8).tobytes(), preset=9))
    coded += len(lzma.compress(ids_b.numpy().astype(np.uint16).tobytes(), preset=9))
    assert out["coded_bits_per_value"] == pytest.approx(8 * coded / (8 * 10))
    assert out["streams"]["a"]["usage"] == pytest.approx(50.0)
    assert out["streams"]["b"]["vocabulary"] == 300
    with pytest.raises(ValueError, match="streams"):
        TokenRate({"a": 4}).update({"b": ids_b})
