import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from lit_modules.metrics import CodebookUsage, FieldErrors


def test_field_errors_match_a_hand_computation_over_two_batches():
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        target = torch.randn(3, 1, 16, 16, generator=gen) * 2 + 1
        pred = target + 0.1 * torch.randn(3, 1, 16, 16, generator=gen)
        sigma = torch.tensor([[2.0], [0.5], [1.0]])
        batches.append((pred, target, sigma))
    metric = FieldErrors()
    for b in batches:
        metric.update(*b)
    got = {k: float(v) for k, v in metric.compute().items()}

    p = np.concatenate([b[0].numpy() for b in batches]).astype(np.float64)
    t = np.concatenate([b[1].numpy() for b in batches]).astype(np.float64)
    s = np.concatenate([b[2].numpy() for b in batches]).astype(np.float64)[:, :, None, None]
    e = p - t
    assert got["nmae"] == pytest.approx(100 * np.mean(np.abs(e) / s), rel=1e-9)
    assert got["nrmse"] == pytest.approx(100 * np.sqrt(np.mean((e / s) ** 2)), rel=1e-9)
    assert got["rel_l1"] == pytest.approx(100 * np.abs(e).sum() / np.abs(t).sum(), rel=1e-9)
    assert got["rel_l2"] == pytest.approx(100 * np.sqrt((e**2).sum() / (t**2).sum()), rel=1e-9)
    psnr = [10 * math.log10((ti.max() - ti.min()) ** 2 / np.mean(ei**2)) for ti, ei in zip(t, e, strict=False)]
    assert got["psnr"] == pytest.approx(np.mean(psnr), rel=1e-9)
    ssim = [
        float(structural_similarity_index_measure(torch.tensor(pi[None]), torch.tensor(ti[None]),
                                                  data_range=float(ti.max() - ti.min())))
        for pi, ti in zip(p, t, strict=False)
    ]
    assert got["ssim"] == pytest.approx(np.mean(ssim), abs=1e-5)


def test_per_group_values_equal_the_metric_on_that_group_alone():
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(6, 1, 16, 16, generator=gen)
    pred = target + 0.2 * torch.randn(6, 1, 16, 16, generator=gen)
    sigma = torch.rand(6, 1, generator=gen) + 0.5
    group = torch.tensor([0, 1, 0, 2, 1, 0])
    grouped = FieldErrors(groups=4)
    grouped.update(pred, target, sigma, group)
    per_group = grouped.compute_groups()
    assert per_group[3] is None  # no sample of group 3
    for g in range(3):
        alone = FieldErrors()
        alone.update(pred[group == g], target[group == g], sigma[group == g])
        for k, v in alone.compute().items():
            assert float(per_group[g][k]) == pytest.approx(float(v), rel=1e-9), (g, k)
    overall = FieldErrors()
    overall.update(pred, target, sigma)
    assert float(grouped.compute()["nrmse"]) == pytest.approx(float(overall.compute()["nrmse"]), rel=1e-12)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        grouped.update(pred, target, sigma, group + 3)


def test_perfect_reconstruction_and_reset():
    metric = FieldErrors()
    x = torch.rand(2, 1, 16, 16)
    metric.update(x, x, torch.ones(2, 1))
    out = metric.compute()
    assert out["nrmse"] == 0 and out["ssim"] == pytest.approx(1.0, abs=1e-6)
    metric.reset()
    assert int(metric.n_samples.sum()) == 0


def test_codebook_statistics_come_from_counts_summed_over_updates():
    metric = CodebookUsage(8)
    metric.update(torch.tensor([0, 0, 1]))
    metric.update(torch.tensor([[1, 2], [2, 2]]))
    counts = np.array([2, 2, 3, 0, 0, 0, 0, 0], dtype=np.float64)
    assert metric.counts.tolist() == counts.tolist()
    p = counts[counts > 0] / counts.sum()
    entropy = -(p * np.log2(p)).sum()
    out = metric.compute()
    assert float(out["usage"]) == pytest.approx(100 * 3 / 8)
    assert float(out["entropy_bits"]) == pytest.approx(entropy)
    assert float(out["perplexity"]) == pytest.approx(2**entropy)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        metric.update(torch.tensor([8]))


def test_constant_targets_are_left_out_of_psnr_and_ssim():
    metric = FieldErrors()
    x = torch.rand(2, 1, 16, 16)
    flat = torch.full((1, 1, 16, 16), 3.0)
    metric.update(torch.cat([x + 0.01, flat + 0.5]), torch.cat([x, flat]), torch.ones(3, 1))
    out = metric.compute()
    assert int(metric.n_flat.sum()) == 1 and int(metric.n_samples.sum()) == 2
    expected = np.mean([10 * math.log10(float(xi.max() - xi.min()) ** 2 / 1e-4) for xi in x])
    assert float(out["psnr"]) == pytest.approx(expected, rel=1e-5)
    assert float(out["nrmse"]) > 10  # the flat sample's error still counts in the field errors
