"""Pure-torch tokenizers (no Lightning, no Hydra).

Note: this top-level package is named `tokenizers` and shadows Hugging Face's `tokenizers` when both
are importable from the same path; SciTok depends on nothing that imports Hugging Face's.
"""

from tokenizers.base import TokenizerOutput
from tokenizers.eeg import EEGTokenizer
from tokenizers.fsq import FSQ
from tokenizers.load import load_tokenizer
from tokenizers.phaedra import PhaedraTokenizer

__all__ = ["FSQ", "EEGTokenizer", "PhaedraTokenizer", "TokenizerOutput", "load_tokenizer"]
