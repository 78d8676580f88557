"""Pure-torch tokenizers (no Lightning, no Hydra), their contract and `load_tokenizer`.

Note: this top-level package is named `tokenizers` and shadows Hugging Face's `tokenizers` when both
are importable from the same path; SciTok depends on nothing that imports Hugging Face's.
"""

from tokenizers.astro import GalaxyImageTokenizer, ScalarQuantileTokenizer, SpectrumTokenizer
from tokenizers.base import DataMetadata, Tokenizer, TokenizerOutput, check_tokenizer
from tokenizers.eeg import EEGTokenizer
from tokenizers.fsq import FSQ
from tokenizers.load import load_tokenizer, save_tokenizer
from tokenizers.phaedra import PhaedraTokenizer
from tokenizers.released import load_released
from tokenizers.svqvae import SVQVAE

__all__ = [
    "FSQ",
    "SVQVAE",
    "DataMetadata",
    "EEGTokenizer",
    "GalaxyImageTokenizer",
    "PhaedraTokenizer",
    "ScalarQuantileTokenizer",
    "SpectrumTokenizer",
    "Tokenizer",
    "TokenizerOutput",
    "check_tokenizer",
    "load_released",
    "load_tokenizer",
    "save_tokenizer",
]
