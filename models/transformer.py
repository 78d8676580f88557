"""A causal transformer over SciTok tokens, readable top to bottom (nanoGPT's habit). Pure torch.
With `causal=False` the same blocks attend both ways: an encoder whose every position reads the whole sequence
(the field pairs' `future_inputs=present`: the future frame predicted in one pass from the present frame).

    config = TransformerConfig(vocab_size=vocab.size, n_types=vocab.n_types, max_len=512)
    model = Transformer(config)
    logits = model(ids, types)                                  # ids, types: [B, T] -> logits [B, T, V]
    out = model.generate(prompt, layout, n_new, bounds=vocab.type_bounds())   # greedy, with a KV cache

Pre-norm blocks (LayerNorm or RMSNorm) of causal self-attention (F.scaled_dot_product_attention) and a GELU MLP;
token + type + learned position embeddings, optionally rotary ones too (`rope`: 1-D, or axial over a grid's
coordinates, set_coords); final norm; LM head tied to the token embedding (optional).
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
    code_dim: int = 0  # > 0: each id also embeds its tokenizer code vector (set_codes), see Transformer
    context: int = 0  # aligned context ids per position that inputs may carry (hidden(context=...)); 0: none
    causal: bool = True  # False: every position attends to every other (an encoder; no generate, no KV cache)
    conditions: int = 0  # > 0: each sequence has a condition id < conditions (hidden(condition=...)); 0: none
    rope: bool = False  # rotary position embedding of queries and keys by each position's coordinates (set_coords)
    rope_axes: int = 1  # coordinates per position (the field pairs: 2, a cell's row and column)
    rope_base: float = 100.0  # the slowest pair turns ~1/base rad per position: offsets up to ~base stay apart
    rope_period: list[float] | None = None  # per axis: rotary angles of whole turns per period (a torus), not base
    pos_emb: bool = True  # learned absolute position embeddings; False: positions only through rope (shift-equivariant)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.norm not in ("layer", "rms"):
            raise ValueError(f"norm must be 'layer' or 'rms', got {self.norm!r}")
        if self.rope and (self.d_model // self.n_heads) % (2 * self.rope_axes):
            raise ValueError(
                f"rope over {self.rope_axes} axes needs a head width divisible by {2 * self.rope_axes}, "
                f"got d_model {self.d_model} / n_heads {self.n_heads} = {self.d_model // self.n_heads}"
            )
        if self.rope_period is not None and (
            len(self.rope_period) != self.rope_axes or min(self.rope_period, default=0) <= 0
        ):
            raise ValueError(
                f"rope_period must give a period > 0 for each of the {self.rope_axes} rope axes, got {self.rope_period}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def make_norm(config: TransformerConfig) -> nn.Module:
    return nn.LayerNorm(config.d_model) if config.norm == "layer" else nn.RMSNorm(config.d_model)


def rope_angles(coords: torch.Tensor, head_dim: int, base: float, period: list[float] | None = None) -> torch.Tensor:
    """Rotation angles [..., head_dim / 2] of positions at `coords` [..., axes]: each axis turns its own
    head_dim / (2·axes) pairs of channels, at frequencies base^(−2i/(head_dim/axes)) (RoFormer; axial 2-D RoPE for
    grids): the product of a rotated query and key depends on the two positions' offset only.

    With a `period` per axis (a grid that wraps around, a torus) the frequencies are its harmonics 2π·k/P,
    k = 1, 2, … (k cycling through 1 … ⌊P/2⌋, the distinct ones, when there are more pairs): every angle repeats
    after P, so the product depends on the offset around the torus, and a cell P away is the cell itself."""
    axes = coords.shape[-1]
    half = head_dim // (2 * axes)
    i = torch.arange(half, device=coords.device, dtype=torch.float32)
    if period is None:
        freqs = (base ** (-i / half)).expand(axes, half)
    else:
        P = torch.tensor(period, device=coords.device, dtype=torch.float32)[:, None]  # [axes, 1]
        harmonic = 1 + i[None] % (P // 2).clamp_min(1)
        freqs = 2 * math.pi * harmonic / P
    return (coords.float()[..., None] * freqs).flatten(-2)


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D] with channel i and i + D/2 turned by angles [B, 1, T, D/2] (the GPT-NeoX pairing)."""
    x1, x2 = x.float().chunk(2, -1)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).to(x.dtype)


KVCache = list[tuple[torch.Tensor, torch.Tensor] | None]  # per layer: keys, values [B, H, T_past, D_head]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_heads, self.dropout, self.causal = config.n_heads, config.dropout, config.causal
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        key_valid: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        angles: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: [B, T, C]; key_valid: [B, T_past + T] bool (False = padding) or None; past: cached keys/values;
        angles: [B or 1, 1, T, D/2] rotary angles of the new positions (cached keys are stored rotated).
        Returns the output [B, T, C] and the keys/values [B, H, T_past + T, D] for the cache."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)  # [B, H, T, D]
        if angles is not None:
            q, k = rotate(q, angles), rotate(k, angles)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        T_all = k.shape[2]
        if key_valid is None and past is None:  # the plain case: SDPA's fused (causal) kernels need no mask
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=self.causal and T > 1, dropout_p=self.dropout if self.training else 0.0
            )
            return self.proj(y.transpose(1, 2).reshape(B, T, C)), (k, v)
        mask = None
        if not self.causal:  # an encoder: only padding is hidden
            mask = None if key_valid is None else key_valid[:, None, None, :]
        elif key_valid is not None or T > 1:
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
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, d_ff, bias=False),
            nn.GELU(),
            nn.Linear(d_ff, config.d_model, bias=False),
            nn.Dropout(config.dropout),
        )

    def forward(self, x, key_valid=None, past=None, angles=None):
        a, kv = self.attn(self.norm1(x), key_valid, past, angles)
        x = x + a
        return x + self.mlp(self.norm2(x)), kv


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.type_emb = nn.Embedding(config.n_types, config.d_model)
        self.pos_emb = nn.Embedding(config.max_len, config.d_model) if config.pos_emb else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = make_norm(config)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_weights:
            self.head.weight = self.tok_emb.weight
        if config.code_dim:
            # what each id stands for, [vocab_size, code_dim] (zeros for the specials): set_codes fills it
            self.register_buffer("codes", torch.zeros(config.vocab_size, config.code_dim))
            self.code_proj = nn.Linear(config.code_dim, config.d_model, bias=False)
        if config.context:  # the slots' embeddings side by side -> d_model
            self.context_proj = nn.Linear(int(config.context) * config.d_model, config.d_model, bias=False)
        if config.conditions:  # what the whole sequence is about (the field pairs: the variable), at every position
            self.cond_emb = nn.Embedding(config.conditions, config.d_model)
        if config.rope:  # each position id's coordinates [max_len, rope_axes]: default the id itself (set_coords)
            coords = torch.arange(config.max_len, dtype=torch.float32)[:, None].expand(-1, config.rope_axes)
            self.register_buffer("coords", coords.clone())
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layers))
        if config.context:  # slot 0's own embedding at first (with tied weights its logit starts highest), the rest 0
            nn.init.zeros_(self.context_proj.weight)
            nn.init.eye_(self.context_proj.weight[:, : config.d_model])

    def set_codes(self, codes: torch.Tensor) -> None:
        """codes: [vocab_size, code_dim], the code vector of every id (each stream in its own columns, standardized;
        TransformerModule builds it from the tokenizers' `code_vectors`).

        An id's embedding is then tok_emb[id] + code_proj(codes[id]), and with tied weights its output row too: ids
        whose codes are close start close, in and out, so a model that has seen a code learns about its neighbours
        (a 8640-id FSQ grid is 8 small integer coordinates, not 8640 unrelated symbols)."""
        if tuple(codes.shape) != tuple(self.codes.shape):
            raise ValueError(
                f"codes must be [{self.config.vocab_size}, {self.config.code_dim}], got {tuple(codes.shape)}"
            )
        self.codes.copy_(codes)

    def set_coords(self, coords: torch.Tensor) -> None:
        """coords: [max_len, rope_axes], where each position id lies (the field pairs: a grid cell's row and column,
        FieldTokenDataModule.position_coords): attention then depends on the offset between two cells on the grid,
        the same everywhere on it, rather than on two learned position vectors (RoPE; the Phaedra paper's operator
        uses 2-D RoPE)."""
        if not self.config.rope or tuple(coords.shape) != tuple(self.coords.shape):
            want = (self.config.max_len, self.config.rope_axes) if self.config.rope else "none (config.rope=False)"
            raise ValueError(f"coords must be {want}, got {tuple(coords.shape)}")
        self.coords.copy_(coords)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, T, d_model]."""
        x = self.tok_emb(ids)
        return x + self.code_proj(self.codes[ids]) if self.config.code_dim else x

    def output_weight(self, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """The LM head's rows for ids [lo, hi) [n, d_model] (with tied weights and codes: the embedding rows)."""
        weight = self.head.weight[lo:hi]
        if self.config.code_dim and self.config.tie_weights:
            weight = weight + self.code_proj(self.codes[lo:hi])
        return weight

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(
        self,
        ids: torch.Tensor,
        types: torch.Tensor,
        key_valid: torch.Tensor | None = None,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ids, types: [B, T] int64; key_valid: [B, T_past + T] bool (False = PAD) or None; cache: filled in place
        with every layer's keys/values (positions continue after what it holds); positions: [B, T] or [T] ids into
        the position embedding, default T_past … T_past + T − 1; context: [B, T, config.context] ids ([B, T] for
        one slot); condition: [B] ids < config.conditions (required when the model has conditions).
        -> logits [B, T, vocab_size]."""
        hidden = self.hidden(ids, types, key_valid, cache, positions, context, condition)
        return F.linear(hidden, self.output_weight())

    def hidden(
        self,
        ids: torch.Tensor,
        types: torch.Tensor,
        key_valid: torch.Tensor | None = None,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final-norm hidden states [B, T, d_model] (forward without the LM head: training can apply the head to
        one id range at a time, `output_weight(lo, hi)`).

        Explicit `positions` let a sequence say where a token sits in its data rather than in the sequence (the
        field pairs give both frames the positions of their grid cells). An aligned `context` id adds
        context_proj(embed(id)) to a position's input: the field pairs give the position that predicts a cell of
        the future frame the present token of that cell (PAD elsewhere), so continuing the present is a local
        function from the first step and attention is left for what moves (datamodules/tokens.py). With several slots
        ([B, T, n]) each slot has its own block of context_proj: the field pairs put the present tokens of the cell's
        neighbours there, so a local stencil, the shape of a PDE's update, is there from the first step instead of
        being learned from 2-D positions through attention. A `condition` id per sequence adds its embedding at every
        position: the field pairs give the variable, as the pixel baseline gets it as one-hot channels."""
        B, T = ids.shape
        if cache is not None and not self.config.causal:
            raise ValueError("a KV cache needs a causal transformer: this one attends both ways (config.causal=False)")
        if types.shape != ids.shape:
            raise ValueError(f"types {tuple(types.shape)} must have the shape of ids {tuple(ids.shape)}")
        if positions is None:
            start = 0 if cache is None or cache[0] is None else cache[0][0].shape[2]
            if start + T > self.config.max_len:
                raise ValueError(f"sequence of {start + T} tokens is longer than max_len {self.config.max_len}")
            positions = torch.arange(start, start + T, device=ids.device)
        elif positions.numel() and (positions.min() < 0 or positions.max() >= self.config.max_len):
            raise ValueError(
                f"positions must lie in [0, max_len={self.config.max_len}), got "
                f"[{int(positions.min())}, {int(positions.max())}]"
            )
        x = self.embed(ids) + self.type_emb(types)
        if self.pos_emb is not None:
            pos = self.pos_emb(positions)
            x = x + (pos if pos.ndim == 3 else pos[None])
        if context is not None:
            slots = int(self.config.context)
            context = context[..., None] if context.ndim == 2 else context
            if not slots or context.shape[:2] != ids.shape or context.shape[2] != slots:
                raise ValueError(
                    f"context ids must be [B, T, {slots}] (config.context slots) for ids "
                    f"{tuple(ids.shape)}, got {tuple(context.shape)}"
                )
            x = x + self.context_proj(self.embed(context).flatten(-2))
        if self.config.conditions or condition is not None:
            n = self.config.conditions
            if condition is None or not n or tuple(condition.shape) != (B,):
                got = None if condition is None else tuple(condition.shape)
                raise ValueError(f"condition ids must be [B]={B} for a model of config.conditions={n}, got {got}")
            if condition.numel() and (condition.min() < 0 or condition.max() >= n):
                lo, hi = int(condition.min()), int(condition.max())
                raise ValueError(f"condition ids must lie in [0, {n}), got [{lo}, {hi}]")
            x = x + self.cond_emb(condition)[:, None]
        angles = None
        if self.config.rope:
            head_dim = self.config.d_model // self.config.n_heads
            angles = rope_angles(
                self.coords[positions], head_dim, self.config.rope_base, self.config.rope_period
            )  # [(B,) T, D/2]
            angles = angles[:, None] if angles.ndim == 3 else angles[None, None]
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x, kv = block(x, key_valid, None if cache is None else cache[i], angles)
            if cache is not None:
                cache[i] = kv
        return self.norm(x)

    def pick(self, logits: torch.Tensor, how: str = "argmax", lo: int = 0) -> torch.Tensor:
        """The greedy choice in each row of logits [..., V] over ids lo … lo + V − 1 (−inf where an id is not
        allowed) -> [...] indices into those V: the most probable (how="argmax") or the allowed id whose code is
        nearest the expected code under softmax(logits) (how="expected_code", with set_codes)."""
        if how == "argmax":
            return logits.argmax(-1)
        if how != "expected_code" or not self.config.code_dim:
            raise ValueError(f"pick must be 'argmax' or 'expected_code' (with code vectors), got {how!r}")
        codes = self.codes[lo : lo + logits.shape[-1]]
        expected = F.softmax(logits.float(), -1) @ codes  # [..., code_dim]
        closeness = 2 * expected @ codes.T - codes.pow(2).sum(-1)  # −|c − ê|² up to a constant
        return closeness.masked_fill(logits == -math.inf, -math.inf).argmax(-1)

    def new_cache(self) -> KVCache:
        return [None] * self.config.n_layers

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        layout: torch.Tensor,
        n_new: int,
        bounds: torch.Tensor | None = None,
        temperature: float = 0.0,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        positions: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        pick: str = "argmax",
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Continue `prompt` [B, T0] by n_new tokens. layout: [T0 + n_new] (or [B, T0 + n_new]) type id of every
        position, the prompt's included; bounds: [n_types, 2] the id range [lo, hi) of each type, to which a new
        token is restricted. temperature 0: greedy, else sampling from softmax(logits / temperature). Greedy picks
        the most probable id (pick="argmax") or, with code vectors (set_codes), the id whose code is nearest the
        expected code under the distribution (pick="expected_code": the least squared error in code space, what
        a forecast of a continuous quantity wants rather than the mode).
        positions, context: [T0 + n_new] (or [B, …]) position ids and context ids, as the sequences were trained
        with; default 0, 1, … and none; condition: [B] condition ids (a model with conditions). Returns
        [B, T0 + n_new]."""
        B, T0 = prompt.shape
        if not self.config.causal:
            raise ValueError("generate needs a causal transformer: this one attends both ways (config.causal=False)")
        if pick not in ("argmax", "expected_code") or (pick == "expected_code" and not self.config.code_dim):
            raise ValueError(f"pick must be 'argmax' or 'expected_code' (with code vectors), got {pick!r}")
        layout = layout.expand(B, -1) if layout.ndim == 1 else layout
        if layout.shape[1] < T0 + n_new:
            raise ValueError(f"layout covers {layout.shape[1]} positions, generation needs {T0 + n_new}")
        given = {"positions": positions, "context": context}
        for name, value in given.items():
            if value is not None:
                given[name] = value = value.expand(B, -1) if value.ndim == 1 else value
                if value.shape[1] < T0 + n_new:
                    raise ValueError(f"{name} cover {value.shape[1]} tokens, generation needs {T0 + n_new}")

        def at(span: slice) -> dict[str, torch.Tensor | None]:
            return {name: None if value is None else value[:, span] for name, value in given.items()}

        ids = prompt
        cache = self.new_cache() if use_cache else None
        logits = self(ids, layout[:, :T0], cache=cache, condition=condition, **at(slice(0, T0)))[:, -1]
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
                nxt = self.pick(logits, pick)[:, None]
            ids = torch.cat([ids, nxt], 1)
            if t + 1 < T0 + n_new:
                if use_cache:
                    step = self(nxt, new_type[:, None], cache=cache, condition=condition, **at(slice(t, t + 1)))
                else:
                    step = self(ids, layout[:, : t + 1], condition=condition, **at(slice(0, t + 1)))
                logits = step[:, -1]
        return ids
