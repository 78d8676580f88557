import pytest
import torch

from tokenizers import PhaedraTokenizer

SMALL = dict(ch=16, ch_mult=[1, 2, 4], num_res_blocks=1, attn_resolutions=[16], resolution=64)


@pytest.fixture(scope="module")
def phaedra():
    torch.manual_seed(0)
    return PhaedraTokenizer(**SMALL).eval()


@pytest.mark.parametrize("hw", [(32, 32), (64, 96), (48, 16)])
def test_shapes_dtypes_and_ranges_on_any_divisible_size(phaedra, hw):
    x = torch.randn(2, 1, *hw)
    with torch.no_grad():
        out = phaedra(x)
    assert out.recon.shape == x.shape
    assert set(out.tokens) == {"morph", "amp"} == set(phaedra.streams)
    for name, ids in out.tokens.items():
        assert ids.dtype == torch.int64
        assert ids.shape == (2, hw[0] // 4, hw[1] // 4)
        assert 0 <= ids.min() and ids.max() < phaedra.streams[name]
    assert phaedra.streams == {"morph": 8640, "amp": 1024}


def test_decode_of_encode_equals_forward_recon_in_eval(phaedra):
    x = torch.randn(3, 1, 32, 48)
    with torch.no_grad():
        recon = phaedra(x).recon
        again = phaedra.decode(phaedra.encode(x))
    assert torch.equal(again, recon)


def test_fsq_baseline_has_one_stream_and_eight_latent_channels():
    fsq = PhaedraTokenizer(**SMALL, amp_levels=None).eval()
    assert fsq.streams == {"morph": 8640}
    assert fsq.z_channels == 8
    with torch.no_grad():
        out = fsq(torch.randn(1, 1, 32, 32))
    assert set(out.tokens) == {"morph"}
    with pytest.raises(KeyError, match="amp"):
        fsq.code_vectors("amp")
    # 0 (or 1) levels is not a way to ask for the baseline: refused by name
    for levels in (0, 1):
        with pytest.raises(
            ValueError, match=f"amp_levels must be ≥ 2 .* or null for the FSQ-only baseline; got {levels}"
        ):
            PhaedraTokenizer(**SMALL, amp_levels=levels)


def test_rate_matched_fsq_spends_phaedras_bits_in_two_coarse_streams():
    """experiment=fsq_matched's model: morph [5,4,4,3,3,3,2,2] + morph2 [4,4,4,4,4], no amplitude: 13 latent
    channels, two ids per position, log2(8640·1024) bits — Phaedra's rate exactly."""
    import math

    from hydra import compose, initialize_config_dir

    from tests.helpers import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        spec = compose("train", overrides=["experiment=fsq_matched"]).model.tokenizer
    assert spec.amp_levels is None and list(spec.morph2_levels) == [4, 4, 4, 4, 4]
    torch.manual_seed(0)
    matched = PhaedraTokenizer(**SMALL, amp_levels=None, morph2_levels=list(spec.morph2_levels)).eval()
    assert matched.streams == {"morph": 8640, "morph2": 1024} and matched.z_channels == 13
    bits = lambda t: sum(math.log2(v) for v in t.streams.values())  # noqa: E731
    assert bits(matched) == pytest.approx(bits(PhaedraTokenizer(**SMALL)), abs=1e-12)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        out = matched(x)
        tokens = matched.encode(x)
        assert torch.equal(matched.decode(tokens), out.recon)
    assert tokens["morph2"].shape == tokens["morph"].shape == (2, 8, 8)
    assert tokens["morph2"].max() < 1024 and matched.code_vectors("morph2").shape == (1024, 5)
    # the second stream carries information of its own: other morph2 ids, another reconstruction
    with torch.no_grad():
        other = matched.decode({**tokens, "morph2": (tokens["morph2"] + 1) % 1024})
    assert not torch.allclose(other, out.recon)


def test_the_quantizers_read_an_fp32_latent_under_bf16_autocast(phaedra):
    """bf16-mixed training: the encoder may run in bf16, but the latent the quantizers see is made in fp32 (a bf16
    latent leaves ~8 % of the 1024 amplitude levels unreachable: bench/bench_quantizer_precision.py)."""
    seen = {}
    hooks = [
        q.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0].dtype))
        for name, q in phaedra.groups.items()
    ]
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            phaedra.encode(torch.randn(1, 1, 16, 16))
    finally:
        for h in hooks:
            h.remove()
    assert seen == {"morph": torch.float32, "amp": torch.float32}


def test_code_vectors_are_the_decoded_latents(phaedra):
    morph, amp = phaedra.code_vectors("morph"), phaedra.code_vectors("amp")
    assert morph.shape == (8640, 8) and amp.shape == (1024, 1)
    ids = torch.tensor([[[0, 8639]]])
    assert torch.equal(phaedra.morph.ids_to_codes(ids)[0, 0], morph[[0, 8639]])
    assert amp.min() == pytest.approx(-10.0) and amp.max() == pytest.approx(511 / 512 * 10)


def test_aux_losses_are_off_by_default_and_positive_when_enabled():
    x = torch.randn(2, 1, 32, 32)
    assert PhaedraTokenizer(**SMALL)(x).aux_losses == {}
    aux = PhaedraTokenizer(**SMALL, commitment_weight=0.25, amp_range_weight=1.0)(x * 100).aux_losses
    assert set(aux) == {"commitment", "amp_range"}
    assert all(v.ndim == 0 and v >= 0 for v in aux.values())


def test_paper_config_has_97_8M_parameters():
    with torch.device("meta"):
        model = PhaedraTokenizer()  # defaults are the paper's
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) / 1e6 == pytest.approx(97.8, abs=0.1)
    assert count(model.encoder) / 1e6 == pytest.approx(43.0, abs=0.1)
    assert count(model.decoder) / 1e6 == pytest.approx(54.9, abs=0.1)


def test_wrong_input_shape_names_expected_and_received(phaedra):
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\], got \(2, 3, 32, 32\)"):
        phaedra(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"divisible by .* 4, got \(1, 1, 30, 32\)"):
        phaedra(torch.randn(1, 1, 30, 32))
    with pytest.raises(ValueError, match="missing"):
        phaedra.decode({"morph": torch.zeros(1, 4, 4, dtype=torch.long)})
