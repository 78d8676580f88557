"""A causal transformer over SciTok tokens, readable top to bottom (nanoGPT's habit). Pure torch.

    config = TransformerConfig(vocab_size=vocab.size, n_types=vocab.n_types, max_len=512)
    model = Transformer(config)
    logits = model(ids, types)                                  # ids, types: [B, T] -> logits [B, T, V]
    out = model.generate(prompt, layout, n_new, bounds=vocab.type_bounds())   # greedy, with a KV cache

Pre-norm blocks (LayerNorm or RMSNorm) of causal self-attention (F.scaled_dot_product_attention) and a GELU MLP;
token + type + learned position embeddings; final norm; LM head tied to the token embedding (optional).
Generation reads each new position's type id from the sequence layout (never copies the previous one) and, given
`bounds` ([n_types, 2] id ranges, Vocabulary.type_bounds), only picks ids of that type. The KV cache makes the cost
of a generated token independent of how many came before (apart from attention over the cache).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TransformerConfig:
    vocab_size: int
    n_types: int
    max_len: int = 512  # learned position embeddings; a sequence given explicit `positions` may be longer
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None  # default 4·d_model
    dropout: float = 0.0
    norm: str = "layer"  # "layer" or "rms"
    tie_weights: bool = True

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.norm not in ("layer", "rms"):
            raise ValueError(f"norm must be 'layer' or 'rms', got {self.norm!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def make_norm(config: TransformerConfig) -> nn.Module:
    return nn.LayerNorm(config.d_model) if config.norm == "layer" else nn.RMSNorm(config.d_model)


KVCache = list[tuple[torch.Tensor, torch.Tensor] | None]  # per layer: keys, values [B, H, T_past, D_head]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_heads, self.dropout = config.n_heads, config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None = None,
                past: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: [B, T, C]; key_valid: [B, T_past + T] bool (False = padding) or None; past: cached keys/values.
        Returns the output [B, T, C] and the keys/values [B, H, T_past + T, D] for the cache."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)  # [B, H, T, D]
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        T_all = k.shape[2]
        if key_valid is None and past is None:  # the plain causal case: SDPA's fused causal kernels need no mask
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1,
                                               dropout_p=self.dropout if self.training else 0.0)
            return self.proj(y.transpose(1, 2).reshape(B, T, C)), (k, v)
        mask = None
        if key_valid is not None or T > 1:
            # query i (absolute position T_all − T + i) sees keys j ≤ its position that are not padding
            causal = torch.ones(T, T_all, dtype=torch.bool, device=x.device).tril(T_all - T)
            mask = causal[None, None] if key_valid is None else causal[None, None] & key_valid[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C)), (k, v)


class Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        d_ff = config.d_ff or 4 * config.d_model
        self.norm1, self.attn = make_norm(config), CausalSelfAttention(config)
        self.norm2 = make_norm(config)
        self.mlp = nn.Sequential(nn.Linear(config.d_model, d_ff, bias=False), nn.GELU(),
                                 nn.Linear(d_ff, config.d_model, bias=False), nn.Dropout(config.dropout))

    def forward(self, x, key_valid=None, past=None):
        a, kv = self.attn(self.norm1(x), key_valid, past)
        x = x + a
        return x + self.mlp(self.norm2(x)), kv


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.type_emb = nn.Embedding(config.n_types, config.d_model)
        self.pos_emb = nn.Embedding(config.max_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = make_norm(config)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_weights:
            self.head.weight = self.tok_emb.weight
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, ids: torch.Tensor, types: torch.Tensor, key_valid: torch.Tensor | None = None,
                cache: KVCache | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """ids, types: [B, T] int64; key_valid: [B, T_past + T] bool (False = PAD) or None; cache: filled in place
        with every layer's keys/values (positions continue after what it holds); positions: [B, T] or [T] ids into
        the position embedding, default T_past … T_past + T − 1. -> logits [B, T, vocab_size]."""
        return self.head(self.hidden(ids, types, key_valid, cache, positions))

    def hidden(self, ids: torch.Tensor, types: torch.Tensor, key_valid: torch.Tensor | None = None,
               cache: KVCache | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The final-norm hidden states [B, T, d_model] (forward without the LM head: training can apply the head to
        one id range at a time, `self.head.weight[lo:hi]`).

        Explicit `positions` let a sequence say where a token sits in its data rather than in the sequence: the
        field forecasts give the tokens of both frames the position of their grid cell, so the token to continue
        from is the one of the same cell in the frame before (datamodules/tokens.py)."""
        B, T = ids.shape
        if types.shape != ids.shape:
            raise ValueError(f"types {tuple(types.shape)} must have the shape of ids {tuple(ids.shape)}")
        if positions is None:
            start = 0 if cache is None or cache[0] is None else cache[0][0].shape[2]
            if start + T > self.config.max_len:
                raise ValueError(f"sequence of {start + T} tokens is longer than max_len {self.config.max_len}")
            positions = torch.arange(start, start + T, device=ids.device)
        elif positions.numel() and (positions.min() < 0 or positions.max() >= self.config.max_len):
            raise ValueError(f"positions must lie in [0, max_len={self.config.max_len}), got "
                             f"[{int(positions.min())}, {int(positions.max())}]")
        pos = self.pos_emb(positions)
        x = self.drop(self.tok_emb(ids) + self.type_emb(types) + (pos if pos.ndim == 3 else pos[None]))
        for i, block in enumerate(self.blocks):
            x, kv = block(x, key_valid, None if cache is None else cache[i])
            if cache is not None:
                cache[i] = kv
        return self.norm(x)

    def new_cache(self) -> KVCache:
        return [None] * self.config.n_layers

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, layout: torch.Tensor, n_new: int, bounds: torch.Tensor | None = None,
                 temperature: float = 0.0, use_cache: bool = True, generator: torch.Generator | None = None,
                 positions: torch.Tensor | None = None) -> torch.Tensor:
        """Continue `prompt` [B, T0] by n_new tokens. layout: [T0 + n_new] (or [B, T0 + n_new]) type id of every
        position, the prompt's included; bounds: [n_types, 2] the id range [lo, hi) of each type, to which a new
        token is restricted. temperature 0: greedy, else sampling from softmax(logits / temperature).
        positions: [T0 + n_new] (or [B, …]) position ids, as the sequences were trained with; default 0, 1, ….
        Returns [B, T0 + n_new]."""
        B, T0 = prompt.shape
        layout = layout.expand(B, -1) if layout.ndim == 1 else layout
        if layout.shape[1] < T0 + n_new:
            raise ValueError(f"layout covers {layout.shape[1]} positions, generation needs {T0 + n_new}")
        if positions is not None:
            positions = positions.expand(B, -1) if positions.ndim == 1 else positions
            if positions.shape[1] < T0 + n_new:
                raise ValueError(f"positions cover {positions.shape[1]} tokens, generation needs {T0 + n_new}")

        def at(span: slice) -> torch.Tensor | None:
            return None if positions is None else positions[:, span]

        ids = prompt
        cache = self.new_cache() if use_cache else None
        logits = self(ids, layout[:, :T0], cache=cache, positions=at(slice(0, T0)))[:, -1]
        for t in range(T0, T0 + n_new):
            new_type = layout[:, t]  # the type of the position being generated, from the layout
            if bounds is not None:
                lo, hi = bounds[new_type, 0, None], bounds[new_type, 1, None]
                vocab = torch.arange(logits.shape[-1], device=logits.device)[None]
                logits = logits.masked_fill((vocab < lo) | (vocab >= hi), -math.inf)
            if temperature > 0:
                probs = F.softmax(logits.float() / temperature, -1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            else:
                nxt = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            if t + 1 < T0 + n_new:
                if use_cache:
                    logits = self(nxt, new_type[:, None], cache=cache, positions=at(slice(t, t + 1)))[:, -1]
                else:
                    logits = self(ids, layout[:, : t + 1], positions=at(slice(0, t + 1)))[:, -1]
        return ids
