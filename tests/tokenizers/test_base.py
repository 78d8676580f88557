"""The contract's pieces: the protocol check, nested builds for load_tokenizer, DataMetadata."""

import math

import pytest
import torch

from tokenizers import FSQ, DataMetadata, EEGTokenizer, Tokenizer, check_tokenizer
from tokenizers.base import NORMALIZATIONS, HasLastLayer, codebook_stats
from tokenizers.load import build
from tokenizers.svqvae import SVQVAE


def test_shipped_tokenizers_follow_the_protocol():
    eeg = EEGTokenizer(patch_len=16, hidden_dims=[8])
    svq = SVQVAE(ch=8, ch_mult=[1, 2], num_res_blocks=1, z_channels=8, codebook_size=4, norm_groups=4)
    for tokenizer in (eeg, svq):
        assert isinstance(tokenizer, Tokenizer)
        check_tokenizer(tokenizer)
    assert isinstance(svq, HasLastLayer) and not isinstance(eeg, HasLastLayer)


def test_malformed_streams_are_named():
    class BadStreams(EEGTokenizer):
        @property
        def streams(self):
            return {"tokens": 0}

    with pytest.raises(TypeError, match=r"BadStreams.streams must be .* got \{'tokens': 0\}"):
        check_tokenizer(BadStreams(patch_len=16, hidden_dims=[8]))


def test_build_handles_nested_targets_lists_and_plain_values():
    fsq = "tokenizers.fsq.FSQ"
    built = build(
        {
            "quantizer": {"_target_": fsq, "levels": [3, 2], "_partial_": False},
            "many": [{"_target_": fsq, "levels": [4]}, 7],
            "plain": {"a": 1},
        }
    )
    assert isinstance(built["quantizer"], FSQ) and built["quantizer"].levels == [3, 2]
    assert isinstance(built["many"][0], FSQ) and built["many"][1] == 7 and built["plain"] == {"a": 1}


def test_data_metadata_round_trips_and_refuses_statistics_that_do_not_match_the_variables():
    meta = DataMetadata(
        kind="fields", normalization="standardize", variables=["a/u", "a/v"], mean=[0.0, 1.0], std=[1.0, 2.0]
    )
    assert DataMetadata.from_dict(meta.to_dict()) == meta
    assert all(isinstance(v, str | list) for v in meta.to_dict().values())  # plain: loads with weights_only=True
    with pytest.raises(ValueError, match="2 variables, 1 means"):
        DataMetadata(kind="fields", normalization="standardize", variables=["a/u", "a/v"], mean=[0.0], std=[1.0])


def test_codebook_stats_equal_a_hand_computation():
    # ids 0, 0, 1, 3 of a codebook of 8: p = (1/2, 1/4, 0, 1/4, 0, 0, 0, 0)
    stats = codebook_stats(torch.tensor([2, 1, 0, 1, 0, 0, 0, 0]))
    entropy = -(0.5 * math.log2(0.5) + 2 * 0.25 * math.log2(0.25))  # 1.5 bits
    assert entropy == 1.5
    assert float(stats["usage"]) == 100 * 3 / 8
    assert float(stats["entropy_bits"]) == pytest.approx(entropy, abs=1e-12)
    assert float(stats["perplexity"]) == pytest.approx(2**entropy, abs=1e-12)
    empty = codebook_stats(torch.zeros(4, dtype=torch.long))
    assert [float(empty[k]) for k in ("usage", "entropy_bits", "perplexity")] == [0.0, 0.0, 1.0]


def test_data_metadata_refuses_an_undocumented_normalization():
    with pytest.raises(ValueError, match=r"normalization 'zscore' is not one of the documented 'standardize'.*'none'"):
        DataMetadata(kind="fields", normalization="zscore")
    for name in NORMALIZATIONS:  # each is defined in the schema's docstring, and accepted
        assert f'"{name}"' in DataMetadata.__doc__
        assert DataMetadata(kind="galaxy_catalog", normalization=name, variables=[], mean=[], std=[]).normalization
    for kind in ("fields", "eeg", "images", "galaxy_images", "galaxy_catalog", "galaxy_spectra"):
        assert f'"{kind}"' in DataMetadata.__doc__
