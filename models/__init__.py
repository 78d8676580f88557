"""Sequence models over SciTok tokens (pure torch, no Lightning or Hydra): the vocabulary built from trained
tokenizers (vocab.py) and the causal transformer (transformer.py)."""

from models.transformer import Transformer, TransformerConfig
from models.vocab import SPECIALS, Vocabulary

__all__ = ["SPECIALS", "Transformer", "TransformerConfig", "Vocabulary"]
