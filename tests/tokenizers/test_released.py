"""Released weights (tokenizers/released.py) against the golden outputs of the published code.

tests/data/released/ holds seeded small models in the released file formats, a fixed input and the reference
implementations' tokens, latents and reconstructions (its README: provenance and every convention). Tokens must be
equal; latents and reconstructions within 1e-4: the fixture's own 1- vs 2-thread reruns differ by up to 1.6e-5
(reconstructions) and 1.5e-6 (latents), from float32 summation order, and another CPU's kernels add as much again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenizers import load_released, load_tokenizer, save_tokenizer
from tokenizers.load import build
from tokenizers.released import FULL_CONFIGS, NOT_IN_FILE, RELEASES, SPECS, convert, key_table

DATA = Path(__file__).parents[1] / "data" / "released"
TOLERANCE = 1e-4
# kind -> (fixture folder, weights file, {stream: token file}, {latent/recon name: reference file})
FIXTURES = {
    "phaedra": (
        "phaedra_small",
        "model.safetensors",
        {"amp": "amp_tokens", "morph": "morph_tokens"},
        {"decode": "decode_recon", "forward": "forward_recon"},
    ),
    "ae_fsq": (
        "ae_fsq_small",
        "model.safetensors",
        {"morph": "tokens"},
        {"decode": "decode_recon", "forward": "forward_recon"},
    ),
    "llamagen_vq": (
        "llamagen_small",
        "vq.pt",
        {"tokens": "codes"},
        {"decode": "decode_code_recon", "forward": "forward_recon"},
    ),
}


def fixture(kind: str) -> tuple[Path, Path, Path]:
    folder = DATA / FIXTURES[kind][0]
    return folder, folder / FIXTURES[kind][1], folder / "config.json"


def ref(kind: str, name: str) -> torch.Tensor:
    return torch.from_numpy(np.load(fixture(kind)[0] / f"{name}.npy"))


def outputs(tokenizer, kind: str) -> dict[str, torch.Tensor]:
    """Everything the fixture has a reference for, computed by `tokenizer` on the fixture's input."""
    x = ref(kind, "input")
    with torch.no_grad():
        tokens = tokenizer.encode(x)
        latent = tokenizer.latent(x)
        if kind == "llamagen_vq":  # the normalized code vectors that enter post_quant_conv
            quantized = tokenizer.quantize(latent)[0]
        else:  # each stream's code vectors, stacked along channels in the latent's order
            quantized = torch.cat([tokenizer.code_vectors(s)[tokens[s]] for s in tokenizer.streams], -1)
            quantized = quantized.permute(0, 3, 1, 2)
        return {
            **{f"tokens/{s}": ids for s, ids in tokens.items()},
            "latent_prequant": latent,
            "latent_quant": quantized,
            "decode": tokenizer.decode(tokens),
            "forward": tokenizer(x).recon,
        }


def assert_matches_reference(tokenizer, kind: str) -> dict[str, float]:
    """Tokens equal, the rest within TOLERANCE; returns the max |difference| of each (printed with -s)."""
    got = outputs(tokenizer, kind)
    _, _, streams, recons = FIXTURES[kind]
    for stream, name in streams.items():
        expected = ref(kind, name)
        assert got[f"tokens/{stream}"].dtype == torch.int64 and got[f"tokens/{stream}"].shape == expected.shape
        assert torch.equal(got[f"tokens/{stream}"], expected), f"{kind} {stream}: tokens differ from the reference"
    names = {"latent_prequant": "latent_prequant", "latent_quant": "latent_quant", **recons}
    diffs = {}
    for key, name in names.items():
        expected = ref(kind, name)
        assert got[key].shape == expected.shape, (kind, key)
        diffs[key] = float((got[key] - expected).abs().max())
    print(kind, {k: f"{v:.1e}" for k, v in diffs.items()})
    assert max(diffs.values()) < TOLERANCE, (kind, diffs)
    return diffs


@pytest.mark.parametrize("kind", sorted(FIXTURES))
def test_released_weights_reproduce_the_reference_outputs(kind):
    _, weights, config = fixture(kind)
    tokenizer = load_released(kind, weights, config)
    assert not tokenizer.training and tokenizer.released["kind"] == kind
    assert_matches_reference(tokenizer, kind)


@pytest.mark.parametrize("kind", sorted(FIXTURES))
def test_a_scitok_checkpoint_saved_from_released_weights_loads_back_with_the_same_outputs(kind, tmp_path):
    _, weights, config = fixture(kind)
    released = load_released(kind, weights, config)
    path = save_tokenizer(released, released.spec, released.metadata, tmp_path / f"{kind}.ckpt")
    tokenizer = load_tokenizer(path)
    assert type(tokenizer) is type(released) and tokenizer.metadata == released.metadata
    assert tokenizer.metadata.source.startswith(RELEASES[kind].description)
    assert_matches_reference(tokenizer, kind)


def test_llamagen_weights_take_unit_range_pixels_with_pixel_range_0_1():
    """SciTok's images are [0, 1]: pixel_range=(0, 1) maps them to the network's [-1, 1] and back."""
    _, weights, config = fixture("llamagen_vq")
    tokenizer = load_released("llamagen_vq", weights, config, pixel_range=(0, 1))
    assert tokenizer.metadata.normalization == "unit_range"
    x = (ref("llamagen_vq", "input") + 1) / 2
    with torch.no_grad():
        tokens = tokenizer.encode(x)
        recon = tokenizer.decode(tokens)
    assert torch.equal(tokens["tokens"], ref("llamagen_vq", "codes"))
    # (ref + 1)/2 halves the reference's error; the affine map adds a few float32 ulps of values ≈ 1
    assert float((recon - (ref("llamagen_vq", "decode_code_recon") + 1) / 2).abs().max()) < TOLERANCE


FULL = {"phaedra": "phaedra", "ae_fsq": "ae_fsq", "llamagen_vq": "vq16"}


@pytest.mark.parametrize("kind", sorted(FULL))
def test_full_size_models_cover_the_released_key_listing_one_to_one(kind):
    """On the meta device (no memory): the full-size configs build SciTok models whose converted keys and shapes are
    exactly the released listing's: no released tensor unmapped, no SciTok tensor left at its initialization."""
    listing = json.loads((DATA / f"{FULL[kind]}_full_keys.json").read_text())
    released_config = json.loads((DATA / f"{FULL[kind]}_full_config.json").read_text())
    spec = SPECS[kind](kind, FULL_CONFIGS[kind])
    assert spec == SPECS[kind](kind, released_config), "FULL_CONFIGS differs from the released full-size config"
    with torch.device("meta"):
        tokenizer = build(spec)
        state = {k: torch.empty(shape) for k, shape in listing["state_dict"].items()}
    converted = convert(state, tokenizer, source=f"{FULL[kind]}_full_keys.json")  # raises on an unmapped key/shape
    own = tokenizer.state_dict()
    assert list(converted) == list(own)
    assert all(converted[k].shape == own[k].shape for k in own)
    rows = key_table(RELEASES[kind].family, tokenizer)
    targets = {row.target for row in rows.values()}
    assert targets == set(own) - set(NOT_IN_FILE.get(RELEASES[kind].family, ()))
    assert len(rows) == len(listing["state_dict"]) - (kind == "llamagen_vq")  # all but quantize.codebook_used
    assert sum(p.numel() for p in tokenizer.parameters()) == listing["num_parameters"]


def test_a_scitok_checkpoint_given_as_released_weights_is_refused_naming_load_tokenizer(tmp_path):
    _, weights, config = fixture("phaedra")
    released = load_released("phaedra", weights, config)
    path = save_tokenizer(released, released.spec, released.metadata, tmp_path / "phaedra.ckpt")
    with pytest.raises(ValueError, match=r"phaedra\.ckpt is a SciTok .*load_tokenizer"):
        load_released("phaedra", path, config)


def test_a_truncated_safetensors_file_is_refused_naming_it(tmp_path):
    _, weights, config = fixture("phaedra")
    cut = tmp_path / "model.safetensors"
    cut.write_bytes(weights.read_bytes()[:100_000])
    with pytest.raises(ValueError, match=rf"{cut}.*cannot be read as safetensors.*truncated"):
        load_released("phaedra", cut, config)


def test_a_vq16_file_given_as_phaedra_is_refused_naming_the_right_kind():
    _, weights, _ = fixture("llamagen_vq")
    with pytest.raises(ValueError, match=r"vq\.pt holds LlamaGen VQ .*'llamagen_vq'.*not Phaedra_AE_FSQ_4x4"):
        load_released("phaedra", weights)


def test_an_offline_hub_path_names_the_file_and_the_download_command(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        FileNotFoundError, match=r"hf://llingsch/phaedra/tokenizers/fsq/model\.safetensors.*hf download"
    ):
        load_released("ae_fsq", "hf://llingsch/phaedra/tokenizers/fsq/model.safetensors")


def test_a_missing_file_names_the_download_command(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"absent\.pt do not exist.*hf download FoundationVision/LlamaGen vq_ds"
    ):
        load_released("llamagen_vq", tmp_path / "absent.pt")


def test_weights_of_another_configuration_are_refused_naming_the_file_and_what_differs():
    """The small fixture with the default (full-size) config: other blocks; with a wider config: the first tensor
    whose shape differs, both shapes."""
    _, weights, config = fixture("ae_fsq")
    with pytest.raises(ValueError, match=r"model\.safetensors does not hold the tensors .* missing .*config="):
        load_released("ae_fsq", weights)
    wider = json.loads(config.read_text())
    wider["var_tokenizer_hyperparameters"]["vae_hyperparameters"]["latent_channels"] = 64
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors: encoder\.conv_in\.weight has shape \(32, 1, 3, 3\), .*"
        r"expects \(64, 1, 3, 3\)",
    ):
        load_released("ae_fsq", weights, wider)


def test_an_unknown_kind_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown released kind 'vqgan'.*'ae_fsq', 'llamagen_vq', 'phaedra'"):
        load_released("vqgan", "x.pt")


def test_a_training_checkpoint_with_python_objects_is_refused_with_how_to_extract_the_weights(tmp_path):
    """LlamaGen's training checkpoints hold an argparse Namespace: weights_only=True refuses it, and so does SciTok."""
    import argparse

    _, weights, config = fixture("llamagen_vq")
    state = torch.load(weights, weights_only=True)
    path = tmp_path / "train_ckpt.pt"
    torch.save({**state, "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(ValueError, match=r"train_ckpt\.pt holds Python objects besides tensors.*\['model'\]"):
        load_released("llamagen_vq", path, config)


def test_encode_image_tokenizes_a_large_image_tile_by_tile_with_the_llamagen_weights(tmp_path):
    from PIL import Image

    from encode_image import encode_image

    _, weights, config = fixture("llamagen_vq")
    rng = np.random.default_rng(0)
    image = tmp_path / "large.png"
    Image.fromarray(rng.integers(0, 256, (192, 256, 3), dtype=np.uint8)).save(image)
    out = encode_image(weights, image, tile=64, overlap=32, scales=(0.5, 1.0), released_config=config)
    tokens = np.load(out / "tokens_1.npy")
    assert tokens.shape == (12, 16) and tokens.dtype == np.int64 and 0 <= tokens.min() and tokens.max() < 512
    assert Image.open(out / "recon_1.png").size == (256, 192) and Image.open(out / "recon_0.5.png").size == (128, 96)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["released"]["kind"] == "llamagen_vq" and meta["scales"]["1"]["tokens"] == [12, 16]
    # one tile as large as the image is the untiled model: the tokens of load_released's encode on the same pixels
    square = tmp_path / "square.png"
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(square)
    whole = encode_image(weights, square, tile=128, overlap=0, released_config=config, out=tmp_path / "whole")
    tokenizer = load_released("llamagen_vq", weights, config, pixel_range=(0, 1))
    pixels = torch.from_numpy(np.asarray(Image.open(square), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = tokenizer.encode(pixels)["tokens"][0].numpy()
    np.testing.assert_array_equal(np.load(whole / "tokens_1.npy"), expected)


def test_the_command_line_writes_a_checkpoint_that_load_tokenizer_reads(tmp_path):
    from tokenizers.released import main

    _, weights, config = fixture("llamagen_vq")
    out = main(
        [
            "llamagen_vq",
            str(weights),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "vq.ckpt"),
            "--pixel-range",
            "0",
            "1",
        ]
    )
    tokenizer = load_tokenizer(out)
    assert tokenizer.pixel_range == (0.0, 1.0) and tokenizer.metadata.normalization == "unit_range"
    with torch.no_grad():
        tokens = tokenizer.encode((ref("llamagen_vq", "input") + 1) / 2)["tokens"]
    assert torch.equal(tokens, ref("llamagen_vq", "codes"))
