"""The contract's pieces: the protocol check, nested builds for load_tokenizer, DataMetadata."""

import pytest

from tokenizers import FSQ, DataMetadata, EEGTokenizer, Tokenizer, check_tokenizer
from tokenizers.base import HasLastLayer
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
