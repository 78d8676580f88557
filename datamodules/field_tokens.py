"""Operator learning on field tokens: the tokens of a field at time t → the tokens at t + Δ, read from a token store
of a fields tokenizer (Phaedra, FSQ: `python encode.py ckpt=...`).

    python train.py experiment=field_transformer data.store=outputs/phaedra/<run>/checkpoints/last-tokens

Pairs come from the store's index (dataset, variable, trajectory, time): every (t, t + Δ) of one trajectory and
variable within a split, so the splits are the tokenizer's (its held-out trajectories are held out here too) and
there is no split key to set. Tokens are read from the memory-mapped store a batch at a time: the transformer's
memory does not grow with the data.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from datamodules.common import TensorBatches, unit_ids
from datamodules.token_store import SplitStore
from datamodules.tokens import Layout, StoreSequences
from models.vocab import SPECIAL_TYPE, SPECIALS


def neighbourhood(grid: Sequence[int], streams: int, radius: int, periodic: bool = False) -> torch.Tensor:
    """For every token of a frame (cells in raster order over `grid`, `streams` tokens per cell side by side): the
    frame indices of its context slots [n_cells · streams, slots] — itself, the same stream at every cell within
    `radius` on each axis (offset order of itertools.product), the cell's other streams — with n_cells · streams
    (one past the frame) where the cell lies outside the grid, or, `periodic`, the cell where the grid wraps around
    (a field on a torus: the embedded data's pseudo-spectral solvers)."""
    cells = torch.arange(math.prod(grid)).view(*grid)
    coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij"), -1).view(-1, len(grid))
    size, outside = torch.tensor(grid), math.prod(grid) * streams
    offsets = [o for o in itertools.product(range(-radius, radius + 1), repeat=len(grid)) if any(o)]
    index = []
    for k in range(streams):
        slots = [cells.flatten() * streams + k]
        for o in offsets:
            at = coords + torch.tensor(o)
            if periodic:
                at = at % size
            inside = ((at >= 0) & (at < size)).all(-1)
            at = at.clamp(torch.zeros_like(size), size - 1)
            slots.append(torch.where(inside, cells[tuple(at.T)] * streams + k, outside))
        slots += [cells.flatten() * streams + j for j in range(streams) if j != k]
        index.append(torch.stack(slots, -1))  # [n_cells, slots] for stream k
    return torch.stack(index, 1).flatten(0, 1)  # [n_cells · streams, slots], cell by cell, streams side by side


def pairs_of(index: np.ndarray, delta: int) -> np.ndarray:
    """Rows (src, dst) [n, 2] of a field store's index where dst is the same dataset, variable and trajectory as
    src, `delta` snapshots later; in row order of src."""
    group, _ = unit_ids(index, ("dataset", "variable", "trajectory"))
    time = index["time"].astype(np.int64)
    key = group * (int(time.max(initial=0)) + delta + 1) + time
    order = np.argsort(key, kind="stable")
    at = np.searchsorted(key[order], key + delta)
    found = at < len(key)
    found[found] = key[order[at[found]]] == key[found] + delta
    src = np.flatnonzero(found)
    return np.stack([src, order[at[found]]], 1)


def store_pairs(stores: dict[str, SplitStore], delta: int, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """{split: {"src", "dst": rows of the split's store, "variable": the pair's variable id}} (int64 [n]) for every
    (t, t + delta) of one trajectory and variable (pairs_of): train in index order, val and test in one fixed
    shuffled order drawn from `seed` (splits in the order of `stores`), so that the first evaluation batches hold every
    variable and time. FieldTokenDataModule's pairs, and datamodules/field_pairs.py's: a pixel baseline sees the
    transformer's pairs."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for split, store in stores.items():
        pairs = torch.from_numpy(pairs_of(store.index, delta))
        if len(pairs) == 0:
            raise ValueError(f"{store.path}: no two snapshots of a trajectory {delta} apart (data.delta={delta})")
        if split != "train":
            pairs = pairs[torch.randperm(len(pairs), generator=generator)]
        variable = torch.from_numpy(store.index["variable"].astype(np.int64))[pairs[:, 0]]
        out[split] = {"src": pairs[:, 0], "dst": pairs[:, 1], "variable": variable}
    return out


class FrameIds:
    """Global token ids of a store's frames, read from its memory-mapped streams when asked for: ids[rows] is int64
    [n, S·K] (cells in raster order, each cell's K streams side by side, offset into the vocabulary). Picklable: a
    worker process maps the files itself."""

    def __init__(self, store: SplitStore, streams: list[str], starts: list[int]):
        self.path, self.streams, self.starts = store.path, streams, torch.tensor(starts)
        self._tokens = store.tokens

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_tokens"}

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        if "_tokens" not in self.__dict__:
            self._tokens = SplitStore.open(self.path).tokens
        rows = np.asarray(rows)
        per_stream = [torch.from_numpy(self._tokens[s][rows].astype(np.int64)).flatten(1) for s in self.streams]
        return (torch.stack(per_stream, -1) + self.starts).flatten(1)


FUTURE_INPUTS = ("present", "masked", "tokens")


class FieldPairs(TensorBatches):
    """Pairs (present frame, future frame) of one trajectory and variable; batches are built from the frames' token
    rows, each frame its S cells in raster order with the streams of a cell side by side (morph, amp):
        masked, tokens   ids [BOS] frame(src) [SEP] frame(dst) [EOS]; inputs (masked): MASK over frame(dst)
        present          ids [BOS] frame(dst); inputs frame(src) [EOS]: input j (the present token of a cell and
                         stream) predicts id j + 1 (the future token of the same cell and stream)
    "src", "dst": the rows in the split's store; "variable": the variable id."""

    def __init__(
        self,
        frame_ids: FrameIds,
        src: torch.Tensor,
        dst: torch.Tensor,
        variable: torch.Tensor,
        layout: Layout,
        context_index: torch.Tensor,
        future_inputs: str = "present",
        condition: bool = False,
    ):
        super().__init__(src=src, dst=dst, variable=variable)
        self.condition = condition
        self.frame_ids, self.layout, self.context_index = frame_ids, layout, context_index
        self.future_inputs = future_inputs
        self.specials = {name: SPECIALS.index(name) for name in ("BOS", "SEP", "EOS")}

    def __getitems__(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        t = super().__getitems__(idx)
        n = len(t["src"])

        def special(name: str) -> torch.Tensor:
            return torch.full((n, 1), self.specials[name])

        present, future = self.frame_ids[t["src"]], self.frame_ids[t["dst"]]
        F = present.shape[1]
        if self.future_inputs == "present":
            ids = torch.cat([special("BOS"), future], 1)
            reads = slice(0, F)  # the inputs that predict the future tokens
        else:
            ids = torch.cat([special("BOS"), present, special("SEP"), future, special("EOS")], 1)
            reads = slice(F + 1, 2 * F + 1)  # SEP and each future token predict the next future token
        L = ids.shape[1]
        # the inputs that predict the future tokens carry the present tokens around their cell (context_index: frame
        # index per slot, F = outside the grid -> PAD)
        pad = SPECIALS.index("PAD")
        context = torch.full((n, L, self.context_index.shape[1]), pad)
        context[:, reads] = torch.cat([present, torch.full((n, 1), pad)], 1)[:, self.context_index]
        batch = {
            "ids": ids,
            "types": self.layout.types.expand(n, L),
            "positions": self.layout.positions.expand(n, L),
            "context": context,
            "valid": torch.ones(n, L, dtype=torch.bool),
            "target": self.layout.target.expand(n, L),
            **t,
        }
        if self.condition:  # the model is told the pair's variable (the FNO baseline: one-hot channels)
            batch["condition"] = t["variable"]
        if self.future_inputs == "present":  # the present token where the future one is predicted, read both ways
            batch["inputs"] = torch.cat([present, special("EOS")], 1)
        elif self.future_inputs == "masked":  # MASK for every future token: each predicted from the present alone
            batch["inputs"] = ids.clone()
            batch["inputs"][:, F + 2 : 2 * F + 2] = SPECIALS.index("MASK")
        return batch


class FieldTokenDataModule(StoreSequences):
    """Pairs (tokens of a field at t, tokens at t + Δ) from a fields token store (`store`: encode.py's out_dir, with
    train/, val/, test/). The loss scores the future frame (and EOS) only.

    Positions: every token has the position of its grid cell (1 … S; BOS 0, SEP and EOS S + 1), in both frames,
    so the model finds the present value of the cell it predicts by position rather than by a learned offset of
    S·streams + 1 tokens; order within the sequence is what the causal mask gives. `position_coords` [S + 2, d]: where
    each position id lies on the grid (the specials one step before cell 0 on every axis), the coordinates of the
    transformer's rotary positions (model.transformer.rope: attention by offset on the grid).

    Context (`context_radius` r): the input that predicts a token of the future frame carries the present tokens
    around it ("context", models/transformer.py): slot 0 the same cell and stream, then the same stream at the other
    cells within r of it on every grid axis ((2r + 1)^d − 1, PAD outside the grid), then the cell's other streams.
    The model starts from persistence (slot 0's embedding is its input at first) and has the local stencil of the
    present, from which a PDE's next state mostly follows, without learning 2-D neighbourhoods through attention.

    Future inputs (`future_inputs`): how the model reads a pair (FieldPairs), the future frame predicted from the
    present alone in every case:
        present  (default) the sequence is the future frame, each token predicted where the model reads the present
                 token of its cell and stream (batch "inputs"; the targets in "ids"), with bidirectional attention
                 (`causal` False: models/transformer.py as an encoder): one pass, half the length of the others, and
                 every cell sees the whole present frame
        masked   [BOS] present [SEP] future [EOS] with MASK read over the future frame, causal attention: one pass
        tokens   the same sequence with the true future tokens read (teacher forcing); the forecast is generated
                 token by token

    Periodic (`periodic`): the fields live on a torus (the embedded data: periodic pseudo-spectral solvers), so the
    context stencil wraps around the grid's edges instead of reading PAD there, and `position_period` (the grid's
    size per axis) makes the transformer's rotary positions (model.transformer.rope) periodic: attention then
    depends on two cells' offset around the torus alone. With `model.transformer.pos_emb=false` (no learned
    absolute positions) the model is equivariant to cyclic shifts of the grid, as a Fourier neural operator is.

    Condition (`condition_on_variable`): each pair's variable id as the sequence's condition ("condition",
    `conditions` = the store's variables; models/transformer.py adds its embedding at every position), as the pixel
    baseline gets it as one-hot channels: one model forecasts four different PDE variables.

    evaluation_inputs(): the tokenizer, layout, grid, the normalization of the store's tokenizer and the true fields
    of the val/test rows in physical units (read from the data the store was encoded from), for the transformer
    module's evaluator (FieldForecast: generate the future frame, decode it, compare with the true future, with
    persistence and with the tokenizer's own reconstruction)."""

    KINDS = {"fields": "phaedra"}
    MODALITY = "field"

    def __init__(
        self,
        store: str | None = None,
        delta: int = 1,
        batch_size: int = 8,
        eval_batch_size: int = 32,
        seed: int = 0,
        num_workers: int = 0,
        context_radius: int = 1,
        future_inputs: str = "present",
        condition_on_variable: bool = False,
        periodic: bool = False,
    ):
        if delta < 1:
            raise ValueError(f"data.delta must be ≥ 1 snapshot, got {delta}")
        if future_inputs not in FUTURE_INPUTS:
            raise ValueError(f"data.future_inputs must be one of {FUTURE_INPUTS}, got {future_inputs!r}")
        if context_radius < 0:
            raise ValueError(f"data.context_radius must be ≥ 0 cells, got {context_radius}")
        if not isinstance(periodic, bool):
            raise ValueError(f"data.periodic must be true or false, got {periodic!r}")
        super().__init__(store, batch_size, eval_batch_size, seed, num_workers)
        self.delta, self.context_radius, self.future_inputs = delta, context_radius, future_inputs
        self.causal = future_inputs != "present"
        self.condition_on_variable = condition_on_variable
        self.periodic = periodic
        self.position_period: list[float] | None = None  # periodic: the grid's size per axis (rotary positions wrap)
        # where a batch's inputs hold the present frame, and which inputs' outputs predict the future frame (whose
        # true tokens are the ids one position later): FieldForecast reads and rebuilds them
        self.present_at = self.reads = slice(0, 0)
        self.layout: Layout | None = None
        self.grid: tuple[int, ...] = ()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        meta = self.open()
        streams = list(meta["streams"])
        grids = {tuple(meta["grid"][s]) for s in streams}
        if len(grids) != 1:
            raise ValueError(f"data.store={self.store}: its streams have different grids {meta['grid']}")
        (self.grid,) = grids
        K, S = len(streams), math.prod(self.grid)
        frame_types = [self.vocab.range("field", s).type_id for s in streams] * S
        frame_pos = [1 + cell for cell in range(S) for _ in range(K)]
        F = S * K
        if self.future_inputs == "present":  # input j: the present token j; id j + 1: the future token j
            self.layout = Layout(
                types=[*frame_types, SPECIAL_TYPE],
                positions=[*frame_pos, S + 1],
                target=[False] + [True] * F,
            )
            self.present_at = self.reads = slice(0, F)
        else:
            self.layout = Layout(
                types=[SPECIAL_TYPE, *frame_types, SPECIAL_TYPE, *frame_types, SPECIAL_TYPE],
                positions=[0, *frame_pos, S + 1, *frame_pos, S + 1],
                target=[False] * (F + 2) + [True] * (F + 1),
            )
            self.present_at, self.reads = slice(1, F + 1), slice(F + 1, 2 * F + 1)
        self.max_len = S + 2
        # where each position id lies on the grid (rotary positions, model.transformer.rope): cell 1 + i at its
        # row and column, BOS / SEP / EOS one step before the grid's first cell on every axis
        cells = torch.stack(torch.meshgrid(*[torch.arange(n) for n in self.grid], indexing="ij"), -1)
        special = torch.full((1, len(self.grid)), -1)
        self.position_coords = torch.cat([special, cells.view(S, -1), special]).float()
        if self.periodic:  # a cell's offset to another counts around the torus: the rotary angles repeat per grid size
            self.position_period = [float(n) for n in self.grid]
        if self.condition_on_variable:  # condition ids: the store's variable ids
            self.conditions = len(self.normalization.variables)
        self.context_index = context_index = neighbourhood(self.grid, K, self.context_radius, self.periodic)
        self.context_slots = context_index.shape[1]
        starts = [self.vocab.range("field", s).start for s in streams]
        for split, pairs in store_pairs(self.stores, self.delta, self.seed).items():
            store = self.stores[split]
            self.splits[split] = FieldPairs(
                FrameIds(store, streams, starts),
                pairs["src"],
                pairs["dst"],
                pairs["variable"],
                self.layout,
                context_index,
                self.future_inputs,
                self.condition_on_variable,
            )
        if len(self.splits["train"]) < self.batch_size:
            raise ValueError(
                f"the train split has {len(self.splits['train'])} pairs, fewer than data.batch_size={self.batch_size}"
            )

    def evaluation_inputs(self) -> dict:
        meta = self.normalization
        return {
            "tokenizer": self.tokenizer,
            "vocab": self.vocab,
            "layout": self.layout,
            "streams": list(self.tokenizer.streams),
            "grid": self.grid,
            "truth": self.truth("field_variables_out"),
            "mean": torch.tensor(meta.mean),
            "std": torch.tensor(meta.std),
            "groups": list(meta.variables),
            "context_index": self.context_index,
            "present_at": self.present_at,
            "reads": self.reads,
            "generate": self.future_inputs == "tokens",
        }
