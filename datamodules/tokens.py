"""Token sequences for the downstream transformer: galaxies from the token stores of encode.py (token_store.py),
fields and EEG encoded here through a trained tokenizer (see FieldTokenDataModule, EEGTokenDataModule below).

Every datamodule here gives batches {"ids", "types": int64 [B, L], "valid": bool [B, L]} and, where it needs them,
"positions" (int64 [B, L] position ids) and "target" (bool [B, L]: the tokens the loss scores; default `valid`).
After setup it has `vocab`, `code_vectors` ({"<modality>/<stream>": [V, D]}), `max_len` (the position table the
transformer needs) and `evaluator` (None, or what turns predicted tokens into data-space errors:
lit_modules/forecast.py).

    vocab = galaxy_vocabulary(store.meta)           # from the tokenizers' vocabulary sizes recorded in the store
    seqs = galaxy_sequences(store, vocab)           # ids, types, valid: [N, L]

One galaxy: [BOS] image tokens [SEP] one token per catalog column [SEP] spectrum tokens [EOS], then PAD. A missing
modality (store.present False) is a single MISS token in its place, typed as that modality, so the model sees what is
missing; every other token keeps the type id of its (modality, stream), whatever else the object has. Each catalog
column is a stream of its own (its ids mean values of that column). L = the length with every modality present.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datamodules.common import EpochShuffleSampler, SplitDataModule, TensorBatches, cache_key, split_indices
from datamodules.sources import FieldArrays, describe_arrays
from datamodules.token_store import TokenStore, arrays_fingerprint, file_sha256
from models.vocab import SPECIAL_TYPE, SPECIALS, Vocabulary
from tokenizers.load import UNREADABLE, atomic_write

log = logging.getLogger("scitok")
ROOT = Path(__file__).resolve().parents[1]

MODALITIES = ("image", "catalog", "spectrum")  # sequence order


@dataclass
class Sequences:
    """ids, types: int64 [N, L]; valid: bool [N, L] (False = PAD, for the key-padding mask); object_id: [N]."""

    ids: torch.Tensor
    types: torch.Tensor
    valid: torch.Tensor
    object_id: np.ndarray


def galaxy_vocabulary(meta: dict) -> Vocabulary:
    """Streams in sequence order from a store's meta: image, one stream per catalog column, spectrum (those the
    store has)."""
    sizes = meta["vocab"]
    streams: dict[str, dict[str, int]] = {}
    if "image" in sizes:
        streams["image"] = {"image": sizes["image"]}
    if "catalog" in sizes:
        streams["catalog"] = {column: sizes["catalog"] for column in meta["catalog_columns"]}
    if "spectrum" in sizes:
        streams["spectrum"] = {"spectrum": sizes["spectrum"]}
    return Vocabulary.from_streams(streams)


def _block(store: TokenStore, vocab: Vocabulary, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Global ids and types [N, T_m] of one modality's tokens."""
    local = torch.from_numpy(np.asarray(store.tokens[modality])).long()
    if modality == "catalog":
        columns = store.meta["catalog_columns"]
        if local.shape[1] != len(columns):
            raise ValueError(f"token store: catalog tokens have {local.shape[1]} columns, meta names {len(columns)}")
        ranges = [vocab.range("catalog", c) for c in columns]
    else:
        ranges = [vocab.range(modality, modality)] * local.shape[1]
    starts = torch.tensor([r.start for r in ranges])
    sizes = torch.tensor([r.size for r in ranges])
    if local.numel() and (local.min() < 0 or (local >= sizes).any()):
        raise ValueError(f"token store: {modality} tokens outside their vocabulary (sizes {sizes.unique().tolist()})")
    types = torch.tensor([r.type_id for r in ranges])
    return local + starts, types.expand_as(local)


def galaxy_sequences(store: TokenStore, vocab: Vocabulary) -> Sequences:
    n = len(store.object_id)
    special = {name: vocab.special(name) for name in ("PAD", "BOS", "EOS", "SEP", "MISS")}

    def specials(name: str, type_id: int = SPECIAL_TYPE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.full((n, 1), special[name]), torch.full((n, 1), type_id), torch.ones(n, 1, dtype=torch.bool))

    parts = [specials("BOS")]
    modalities = [m for m in MODALITIES if m in store.tokens]
    for i, modality in enumerate(modalities):
        ids, types = _block(store, vocab, modality)
        present = torch.from_numpy(np.asarray(store.present.get(modality, np.ones(n, bool)))).bool()
        keep = present[:, None].expand_as(ids).clone()
        # a missing modality: its first slot becomes MISS (typed as the modality), the rest are dropped
        ids = torch.where(present[:, None], ids, ids.new_full((), special["MISS"]))
        keep[:, 0] = True
        parts.append((ids, types, keep))
        parts.append(specials("SEP" if i < len(modalities) - 1 else "EOS"))
    ids = torch.cat([p[0] for p in parts], 1)
    types = torch.cat([p[1] for p in parts], 1)
    keep = torch.cat([p[2] for p in parts], 1)
    # move the dropped slots to the end of each row (stable: the kept tokens keep their order), then PAD them
    order = torch.sort((~keep).long(), dim=1, stable=True).indices
    ids, types, valid = ids.gather(1, order), types.gather(1, order), keep.gather(1, order)
    ids = torch.where(valid, ids, special["PAD"])
    types = torch.where(valid, types, SPECIAL_TYPE)
    return Sequences(ids, types, valid, np.asarray(store.object_id))


class GalaxyTokenDataModule(SplitDataModule):
    """Galaxy token sequences from the stores `encode.py` wrote into `store_dir` (its latest.json names one store per
    split). Batches: {"ids", "types": int64 [B, L], "valid": bool [B, L]}. After setup: `vocab` (Vocabulary),
    `code_vectors` ({"<modality>/<stream>": [V, D]} from the tokenizer checkpoints the stores record), `max_len`."""

    # what each modality's checkpoint must hold, and the streams whose code vectors it gives
    EXPECTED = {"image": "GalaxyImageTokenizer", "scalars": "ScalarQuantileTokenizer", "spectra": "SpectrumTokenizer"}

    def __init__(
        self,
        store_dir: str = "data/tokens",
        batch_size: int = 32,
        eval_batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__(None, batch_size, eval_batch_size, (0.8, 0.1, 0.1), seed, num_workers)
        self.store_dir = Path(store_dir)
        self.vocab: Vocabulary | None = None
        self.code_vectors: dict[str, torch.Tensor] = {}
        self.max_len = 0
        self.evaluator = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        index = self.store_dir / "latest.json"
        if not index.is_file():
            raise FileNotFoundError(
                f"no token stores in {self.store_dir} ({index.name} is missing): run "
                f"`python encode.py ckpt=<an experiment=astro_image checkpoint>` first, or "
                f"point data.store_dir at its out_dir"
            )
        paths = json.loads(index.read_text())
        missing = [s for s in ("train", "val", "test") if s not in paths]
        if missing:
            raise ValueError(f"{index}: no store for split(s) {missing}; encode.py writes train, val and test")
        stores = {split: TokenStore.load(paths[split]) for split in ("train", "val", "test")}
        self.vocab = galaxy_vocabulary(stores["train"].meta)
        for split, store in stores.items():
            if galaxy_vocabulary(store.meta) != self.vocab:
                raise ValueError(f"{paths[split]}: its tokenizers' vocabularies differ from the train store's")
        self.code_vectors = self._code_vectors(stores["train"].meta)
        sequences = {split: galaxy_sequences(store, self.vocab) for split, store in stores.items()}
        self.max_len = sequences["train"].ids.shape[1]
        self.splits = {split: TensorBatches(ids=s.ids, types=s.types, valid=s.valid) for split, s in sequences.items()}

    def _code_vectors(self, meta: dict) -> dict[str, torch.Tensor]:
        from tokenizers import load_tokenizer

        out = {}
        for name, path in meta["tokenizers"].items():
            if not Path(path).is_file():
                raise FileNotFoundError(f"token store: the {name} tokenizer checkpoint {path} it was made with is gone")
            tokenizer = load_tokenizer(path)
            if type(tokenizer).__name__ != self.EXPECTED[name]:
                raise ValueError(
                    f"token store: the {name} checkpoint {path} holds a {type(tokenizer).__name__}; "
                    f"expected a {self.EXPECTED[name]}"
                )
            modality = {"image": "image", "scalars": "catalog", "spectra": "spectrum"}[name]
            for stream in tokenizer.streams:
                out[f"{modality}/{stream}"] = tokenizer.code_vectors(stream).detach().float().cpu()
        return out

    @property
    def metadata(self) -> None:
        return None  # tokens carry no data normalization; the tokenizers' checkpoints have theirs

    def make_train_sampler(self) -> EpochShuffleSampler:
        return EpochShuffleSampler(len(self.splits["train"]), self.seed)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer checkpoints for the field and EEG sequences: given, or trained first in the same command


def hydra_value(value) -> str:
    """A plain value (dict, list, str, number, bool, None) in Hydra's override grammar."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def build_source(source) -> tuple[object, dict]:
    """The data source object and its plain config (the token datamodules take the source's config unbuilt,
    `_recursive_: false`, to hand it to the tokenizer's training run)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if OmegaConf.is_config(source) or isinstance(source, dict):
        plain = (
            OmegaConf.to_container(OmegaConf.create(source), resolve=True)
            if not isinstance(source, dict)
            else dict(source)
        )
        return instantiate(plain), plain
    return source, {}


def tokenizer_checkpoint(
    ckpt: str | None,
    expected: str,
    train_experiment: str,
    train_overrides: Sequence[str],
    data_dir: str | Path,
    seed: int,
    train: bool,
    source: dict | None = None,
) -> Path:
    """The checkpoint of the tokenizer whose tokens a transformer models.

    ckpt given: that file, which must hold an `expected` tokenizer (checked when loaded: `load_checked`).
    ckpt None: the one `python train.py experiment=<train_experiment> seed=<seed> data.source=<source>
    <train_overrides>` wrote into <data_dir>/tokenizers/<experiment>-<hash of those arguments>/ — trained there
    first when `train` (once: later runs with the same arguments reuse it; an interrupted training resumes from
    its last.ckpt). The same seed and data source as the transformer's run give the same split by
    trajectory/recording, so the transformer's val/test data were never seen by the tokenizer either. Its final
    weights (checkpoints/last.ckpt, EMA where the recipe has it) are used."""
    if ckpt is not None and str(ckpt) not in ("", "None"):
        path = Path(ckpt).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"data.tokenizer_ckpt={path} does not exist; expected a {expected} checkpoint "
                f"(python train.py experiment={train_experiment}), or null to train one first"
            )
        return path
    args = [f"experiment={train_experiment}", f"seed={seed}", *train_overrides]
    if source:  # the transformer's data source replaces the experiment's, whatever its class
        args[2:2] = ["~data.source", f"+data.source={hydra_value(source)}"]
    key = cache_key(args)
    run_dir = Path(data_dir) / "tokenizers" / f"{train_experiment}-{key}"
    done = run_dir / "tokenizer.json"
    if done.is_file():
        return Path(json.loads(done.read_text())["checkpoint"])
    if not train:
        raise FileNotFoundError(
            f"no {expected} checkpoint in {run_dir}: prepare_data() trains it (data.tokenizer_ckpt "
            f"is null), or give one with data.tokenizer_ckpt=<path>"
        )
    last = run_dir / "checkpoints" / "last.ckpt"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        *args,
        f"paths.data_dir={Path(data_dir).resolve()}",
        f"hydra.run.dir={run_dir.resolve()}",
    ]
    if last.is_file():
        command.append(f"ckpt_path={last.resolve()}")
    log.info(
        "data.tokenizer_ckpt is null: training the %s it needs first (once, reused later):\n  %s",
        expected,
        " ".join(command),
    )
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    if result.returncode != 0 or not last.is_file():
        raise RuntimeError(
            f"training the {expected} failed (exit code {result.returncode}); its run dir is {run_dir}. "
            f"Run the command above to see why, or give data.tokenizer_ckpt=<path>"
        )
    with atomic_write(done) as tmp:
        tmp.write_text(json.dumps({"checkpoint": str(last.resolve()), "command": command}, indent=1))
    return last.resolve()


def parent_debug(overrides: Sequence[str]) -> list[str]:
    """["debug=<choice>"] when this run was started with a debug preset (`python train.py experiment=field_transformer
    debug=fast`) and the tokenizer overrides name none: a debug run's tokenizer is a debug run too, not the full
    recipe (cached under its own key)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or any(o.lstrip("+~").startswith("debug=") for o in overrides):
        return []
    choice = HydraConfig.get().runtime.choices.get("debug")
    return [] if choice in (None, "null") else [f"debug={choice}"]


def load_checked(path: Path, expected: str, train_experiment: str) -> torch.nn.Module:
    """load_tokenizer(path), refused unless it is an `expected` with data metadata."""
    from tokenizers import load_tokenizer

    try:
        tokenizer = load_tokenizer(path)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(
            f"{path}: expected a {expected} checkpoint (python train.py experiment={train_experiment}); {e}"
        ) from e
    if type(tokenizer).__name__ != expected:
        raise ValueError(
            f"{path} holds a {type(tokenizer).__name__}; expected a {expected} checkpoint "
            f"(python train.py experiment={train_experiment})"
        )
    if tokenizer.metadata is None:
        raise ValueError(f"{path} has no data metadata (written before DataMetadata): retrain the {expected}")
    return tokenizer


def cached_tokens(
    kind: str,
    checkpoint: Path,
    inputs: np.ndarray | FieldFrames,
    cache_dir: Path,
    encode: Callable[[], dict[str, np.ndarray]],
    fingerprint: str | None = None,
) -> dict[str, np.ndarray]:
    """{stream: int64 [N, T]} for `inputs` (the exact tokenizer inputs, [N, ...], or frames read from files)
    through `checkpoint`: read from <cache_dir>/<kind>-<key>.npz when the key (the checkpoint's sha256 and the inputs'
    fingerprint: of their values, unless `fingerprint` names them) matches, otherwise `encode()`d once and stored
    there (atomically, token_store.py)."""
    key = TokenStore.key(kind, {"tokenizer": file_sha256(checkpoint)}, fingerprint or arrays_fingerprint(inputs))
    path = TokenStore.path(cache_dir, kind, key)
    if path.is_file():
        try:
            return TokenStore.load(path).tokens
        except UNREADABLE as e:  # a cache: encoding again is the fix
            log.warning("token cache %s cannot be read (%s); encoding again", path, e)
    tokens = encode()
    TokenStore(np.arange(len(inputs)), tokens, {}, {"kind": kind, "checkpoint": str(checkpoint)}).save(path)
    log.info("encoded %d %s samples through %s -> %s", len(inputs), kind, checkpoint, path)
    return tokens


@torch.no_grad()
def encode_batches(
    encode: Callable[..., dict[str, torch.Tensor]],
    inputs: torch.Tensor | Normalized,
    batch_size: int,
    **cond: torch.Tensor,
) -> dict[str, np.ndarray]:
    """Each stream's ids, flattened per sample: {stream: int64 [N, T]}. inputs: [N, ...], or frames read a batch at a
    time (Normalized)."""
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(inputs), batch_size):
        part = {k: v[start : start + batch_size] for k, v in cond.items()}
        for stream, ids in encode(inputs[start : start + batch_size], **part).items():
            ids = ids.reshape(len(ids), -1)
            if stream not in out:  # filled in place: one copy of the tokens, however many batches
                out[stream] = np.empty((len(inputs), ids.shape[1]), np.int64)
            out[stream][start : start + len(ids)] = ids.cpu().numpy()
    return out


class Layout:
    """The fixed token layout of one kind of sequence: types, positions and which tokens the loss scores [L]."""

    def __init__(self, types: list[int], positions: list[int], target: list[bool]):
        self.types, self.positions = torch.tensor(types), torch.tensor(positions)
        self.target = torch.tensor(target)


class TokenizerSequences(SplitDataModule):
    """What the field and EEG sequence datamodules share: the tokenizer checkpoint they encode through (given, or
    trained first: `tokenizer_checkpoint`), checked to be an `EXPECTED` one, and the attributes the transformer
    reads after setup (vocab, code_vectors, max_len, context_slots, evaluator)."""

    EXPECTED = ""  # the tokenizer class its checkpoint must hold
    EXPERIMENT = ""  # the experiment that trains one
    context_slots = 0  # aligned context ids per position in the batches ("context": [B, L, slots]); 0: none

    def __init__(
        self,
        source,
        tokenizer_ckpt: str | None,
        train_tokenizer: dict | None,
        data_dir: str,
        batch_size: int,
        eval_batch_size: int,
        split: Sequence[float],
        seed: int,
        num_workers: int,
    ):
        super().__init__(None, batch_size, eval_batch_size, split, seed, num_workers)
        (self.source, self.source_config), self.data_dir = build_source(source), Path(data_dir)
        self.tokenizer_ckpt = tokenizer_ckpt
        self.train_tokenizer = dict(train_tokenizer or {"experiment": self.EXPERIMENT, "overrides": []})
        self.vocab: Vocabulary | None = None
        self.code_vectors: dict[str, torch.Tensor] = {}
        self.max_len = 0
        self.evaluator = None
        self.checkpoint: Path | None = None

    def _checkpoint(self, train: bool) -> Path:
        overrides = list(self.train_tokenizer.get("overrides") or [])
        return tokenizer_checkpoint(
            self.tokenizer_ckpt,
            self.EXPECTED,
            self.train_tokenizer["experiment"],
            overrides + parent_debug(overrides),
            self.data_dir,
            self.seed,
            train,
            self.source_config,
        )

    def prepare_data(self) -> None:
        self._checkpoint(train=True)

    def load_tokenizer(self) -> torch.nn.Module:
        """The checked tokenizer of the checkpoint (prepare_data trained it where none was given)."""
        self.checkpoint = self._checkpoint(train=False)
        return load_checked(self.checkpoint, self.EXPECTED, self.train_tokenizer["experiment"])

    @property
    def metadata(self) -> None:
        return None  # the tokenizer checkpoint holds the data's normalization

    def make_train_sampler(self) -> EpochShuffleSampler:
        return EpochShuffleSampler(len(self.splits["train"]), self.seed)


# ---------------------------------------------------------------------------------------------------------------
# Fields: the tokens of a field at t, then those at t + Δ


def neighbourhood(grid: Sequence[int], streams: int, radius: int) -> torch.Tensor:
    """For every token of a frame (cells in raster order over `grid`, `streams` tokens per cell side by side): the
    frame indices of its context slots [n_cells · streams, slots] — itself, the same stream at every cell within
    `radius` on each axis (offset order of itertools.product), the cell's other streams — with n_cells · streams
    (one past the frame) where the cell lies outside the grid."""
    cells = torch.arange(math.prod(grid)).view(*grid)
    coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij"), -1).view(-1, len(grid))
    size, outside = torch.tensor(grid), math.prod(grid) * streams
    offsets = [o for o in itertools.product(range(-radius, radius + 1), repeat=len(grid)) if any(o)]
    index = []
    for k in range(streams):
        slots = [cells.flatten() * streams + k]
        for o in offsets:
            at = coords + torch.tensor(o)
            inside = ((at >= 0) & (at < size)).all(-1)
            at = at.clamp(torch.zeros_like(size), size - 1)
            slots.append(torch.where(inside, cells[tuple(at.T)] * streams + k, outside))
        slots += [cells.flatten() * streams + j for j in range(streams) if j != k]
        index.append(torch.stack(slots, -1))  # [n_cells, slots] for stream k
    return torch.stack(index, 1).flatten(0, 1)  # [n_cells · streams, slots], cell by cell, streams side by side


class FieldFrames:
    """Every snapshot of every (dataset, variable, trajectory) of field datasets, in that order, read from them when
    asked for: frames[i] is float32 [n, 1, H, W] in physical units for int indices i [n] (or a slice). Only an index
    table [N, 4] (dataset, trajectory, time, variable) lives in memory. Picklable (FieldArrays reopen their files)."""

    def __init__(self, arrays: list[FieldArrays]):
        self.arrays = arrays
        parts = []
        for d, a in enumerate(arrays):
            n_traj, n_t = a.shape[:2]
            traj, t = (g.ravel() for g in np.meshgrid(np.arange(n_traj), np.arange(n_t), indexing="ij"))
            for v in range(len(a.variables)):
                parts.append(np.stack([np.full_like(traj, d), traj, t, np.full_like(traj, v)], 1))
        self.index = np.concatenate(parts)
        self.hw = arrays[0].hw

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, frames: torch.Tensor | np.ndarray | slice) -> torch.Tensor:
        rows = self.index[frames if isinstance(frames, slice) else np.asarray(frames)]
        out = np.empty((len(rows), *self.hw), np.float32)
        for d in np.unique(rows[:, 0]):
            sel = rows[:, 0] == d
            out[sel] = self.arrays[d].read(rows[sel, 1], rows[sel, 2], rows[sel, 3])
        return torch.from_numpy(out).unsqueeze(1)

    def fingerprint(self) -> str:
        """What the frames are: the files (path, size, modification time) and the datasets' shapes and variables."""
        return cache_key(describe_arrays(self.arrays), n=64)


class Normalized:
    """frames[i] standardized per frame's variable: (x − mean[var]) / std[var]; slices only (encode_batches)."""

    def __init__(self, frames: FieldFrames, var_id: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
        self.frames, self.mean, self.std = frames, mean[var_id][:, None, None, None], std[var_id][:, None, None, None]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return (self.frames[rows] - self.mean[rows]) / self.std[rows]


class FieldPairs(TensorBatches):
    """Pairs (present frame, future frame) of one trajectory and variable; batches are built from the frames' token
    rows: [BOS] frame(src) [SEP] frame(dst) [EOS], each frame its S cells in raster order with the streams of a cell
    side by side (morph, amp)."""

    def __init__(
        self,
        frame_ids: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        layout: Layout,
        context_index: torch.Tensor,
        masked: bool = True,
    ):
        super().__init__(src=src, dst=dst)
        self.frame_ids, self.layout, self.context_index, self.masked = frame_ids, layout, context_index, masked
        self.specials = {name: SPECIALS.index(name) for name in ("BOS", "SEP", "EOS")}

    def __getitems__(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        t = super().__getitems__(idx)
        n = len(t["src"])

        def special(name: str) -> torch.Tensor:
            return torch.full((n, 1), self.specials[name])

        present = self.frame_ids[t["src"]].long()
        ids = torch.cat([special("BOS"), present, special("SEP"), self.frame_ids[t["dst"]].long(), special("EOS")], 1)
        L, F = ids.shape[1], present.shape[1]
        # the input at SEP and at each future token predicts the next future token: its context is the present
        # tokens around that cell (context_index: frame index per slot, F = outside the grid -> PAD)
        pad = SPECIALS.index("PAD")
        context = torch.full((n, L, self.context_index.shape[1]), pad)
        context[:, F + 1 : 2 * F + 1] = torch.cat([present, torch.full((n, 1), pad)], 1)[:, self.context_index]
        batch = {
            "ids": ids,
            "types": self.layout.types.expand(n, L),
            "positions": self.layout.positions.expand(n, L),
            "context": context,
            "valid": torch.ones(n, L, dtype=torch.bool),
            "target": self.layout.target.expand(n, L),
            "src": t["src"],
            "dst": t["dst"],
        }
        if self.masked:  # the model reads MASK for every future token: each is predicted from the present alone
            batch["inputs"] = ids.clone()
            batch["inputs"][:, F + 2 : 2 * F + 2] = SPECIALS.index("MASK")
        return batch


class FieldTokenDataModule(TokenizerSequences):
    """Operator learning on field tokens: the tokens of a field at time t → the tokens at t + Δ (`delta` snapshots
    later), for every trajectory, variable and t of the field source (data/field_source), split by trajectory as
    datamodules/fields.py splits (same seed: the tokenizer's held-out trajectories are held out here too).

    Every snapshot is normalized with the tokenizer checkpoint's own statistics (its DataMetadata; its variables
    must be this source's) and encoded once; the tokens are cached under <data_dir>/tokens/, keyed by the
    checkpoint's sha256 and the inputs. The loss scores the future frame (and EOS) only.

    Positions: every token has the position of its grid cell (1 … S; BOS 0, SEP and EOS S + 1), in both frames,
    so the model finds the present value of the cell it predicts by position rather than by a learned offset of
    S·streams + 1 tokens; order within the sequence is what the causal mask gives.

    Context (`context_slots`, `context_radius` r): the input that predicts a token of the future frame carries the
    present tokens around it ("context", models/transformer.py): slot 0 the same cell and stream, then the same stream
    at the other cells within r of it on every grid axis ((2r + 1)^d − 1, PAD outside the grid), then the cell's
    other streams. The model starts from persistence (slot 0's embedding is its input at first) and has the local
    stencil of the present, from which a PDE's next state mostly follows, without learning 2-D neighbourhoods
    through attention; attention is left for what moves further (README: what got field_transformer there).

    Future inputs (`future_inputs`): "masked" (default) puts MASK where the future frame's tokens would be read
    (batch "inputs"; the targets stay in "ids"), so every future token is predicted from the present alone, as it
    is when forecasting, in one pass; "tokens" reads the true future tokens (teacher forcing) and the forecast is
    generated token by token.

    Batches add "src", "dst": int64 [B] frame indices, for the evaluator (lit_modules/forecast.py FieldForecast:
    generate the future frame, decode it, compare with the true future field, with persistence and with the
    tokenizer's own reconstruction)."""

    def __init__(
        self,
        source,
        tokenizer_ckpt: str | None = None,
        train_tokenizer: dict | None = None,
        data_dir: str = "data",
        delta: int = 1,
        batch_size: int = 8,
        eval_batch_size: int = 32,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        num_workers: int = 0,
        encode_batch_size: int = 64,
        forecast_pick: str = "expected_code",
        context_radius: int = 1,
        future_inputs: str = "masked",
    ):
        if delta < 1:
            raise ValueError(f"data.delta must be ≥ 1 snapshot, got {delta}")
        if future_inputs not in ("masked", "tokens"):
            raise ValueError(f"data.future_inputs must be 'masked' or 'tokens', got {future_inputs!r}")
        if context_radius < 0:
            raise ValueError(f"data.context_radius must be ≥ 0 cells, got {context_radius}")
        super().__init__(
            source, tokenizer_ckpt, train_tokenizer, data_dir, batch_size, eval_batch_size, split, seed, num_workers
        )
        self.delta, self.encode_batch_size, self.forecast_pick = delta, encode_batch_size, forecast_pick
        self.context_radius, self.future_inputs = context_radius, future_inputs

    EXPECTED, EXPERIMENT = "PhaedraTokenizer", "phaedra"

    def prepare_data(self) -> None:
        self.source.prepare(self.data_dir)
        super().prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        from lit_modules.forecast import FieldForecast

        tokenizer = self.load_tokenizer()
        meta = tokenizer.metadata
        arrays = self.source.open(self.data_dir)
        names = [f"{a.name}/{v}" for a in arrays for v in a.variables]
        if meta.normalization != "standardize" or meta.variables != names:
            raise ValueError(
                f"{self.checkpoint}: its tokenizer was trained on variables {meta.variables} "
                f"({meta.normalization}); this data has {names}. Train it on this data "
                f"(data.tokenizer_ckpt=null does) or point data.source at its data"
            )
        # every snapshot of every (dataset, variable, trajectory) in that order; frame index = row of `frames`
        var_id, pairs = [], {"train": [], "val": [], "test": []}
        base = 0
        for a in arrays:
            n_traj, n_t = a.shape[:2]
            if n_t <= self.delta:
                raise ValueError(
                    f"{a.origin}: {n_t} snapshots per trajectory leave no pair {self.delta} apart "
                    f"(data.delta={self.delta})"
                )
            if n_traj < 3:
                raise ValueError(f"{a.origin}: {n_traj} trajectories cannot be split into train/val/test")
            idx = split_indices(n_traj, self.split, self.seed)
            for v in range(len(a.variables)):
                var_id += [names.index(f"{a.name}/{a.variables[v]}")] * (n_traj * n_t)
                for split, trajs in idx.items():
                    for traj in trajs.tolist():
                        first = base + traj * n_t
                        src = torch.arange(first, first + n_t - self.delta)
                        pairs[split].append(torch.stack([src, src + self.delta], 1))
                base += n_traj * n_t
        frames = FieldFrames(arrays)
        var_id = torch.tensor(var_id)
        normalized = Normalized(frames, var_id, torch.tensor(meta.mean), torch.tensor(meta.std))
        tokens = cached_tokens(
            "fields",
            self.checkpoint,
            frames,
            self.data_dir / "tokens",
            lambda: encode_batches(tokenizer.encode, normalized, self.encode_batch_size),
            fingerprint=frames.fingerprint(),
        )
        streams = list(tokenizer.streams)
        grid = tuple(tokenizer.encode(normalized[:1])[streams[0]].shape[1:])
        self.vocab = Vocabulary.from_streams({"field": dict(tokenizer.streams)})
        self.code_vectors = {f"field/{s}": tokenizer.code_vectors(s).detach().float() for s in streams}
        # frame ids [N, S·K]: cell by cell, each cell's streams side by side; int32, filled a stream at a time (the
        # tokens of a 128² snapshot are a quarter of its size in int64: the largest thing this module holds)
        frame_ids = torch.empty(*tokens[streams[0]].shape, len(streams), dtype=torch.int32)
        for k, s in enumerate(streams):
            frame_ids[..., k].copy_(torch.from_numpy(tokens.pop(s)))
            frame_ids[..., k] += self.vocab.range("field", s).start
        frame_ids = frame_ids.flatten(1)
        S, K = frame_ids.shape[1] // len(streams), len(streams)
        frame_types = [self.vocab.range("field", s).type_id for s in streams] * S
        frame_pos = [1 + cell for cell in range(S) for _ in range(K)]
        self.layout = Layout(
            types=[SPECIAL_TYPE, *frame_types, SPECIAL_TYPE, *frame_types, SPECIAL_TYPE],
            positions=[0, *frame_pos, S + 1, *frame_pos, S + 1],
            target=[False] * (S * K + 2) + [True] * (S * K + 1),
        )
        self.max_len = S + 2
        context_index = neighbourhood(grid, K, self.context_radius)
        self.context_slots = context_index.shape[1]
        # val/test in a fixed shuffled order, so the first batches (the data-space errors during validation) hold
        # every variable and time, not the first dataset's first trajectories
        order = {
            split: torch.randperm(sum(len(q) for q in p), generator=torch.Generator().manual_seed(self.seed))
            for split, p in pairs.items()
        }
        self.splits = {
            split: FieldPairs(
                frame_ids,
                *torch.cat(p)[order[split] if split != "train" else slice(None)].unbind(1),
                self.layout,
                context_index,
                masked=self.future_inputs == "masked",
            )
            for split, p in pairs.items()
        }
        if len(self.splits["train"]) < self.batch_size:
            raise ValueError(
                f"the train split has {len(self.splits['train'])} pairs, fewer than data.batch_size={self.batch_size}"
            )
        self.evaluator = FieldForecast(
            tokenizer,
            self.vocab,
            self.layout,
            streams,
            grid,
            frames,
            var_id,
            torch.tensor(meta.mean),
            torch.tensor(meta.std),
            names,
            self.forecast_pick,
        )


# ---------------------------------------------------------------------------------------------------------------
# EEG: the patches of one channel in time order, one token each


class StoredPatches:
    """patches[i]: the patch_len samples of a RowStore (datamodules/eeg.py) from starts[i], read when asked for:
    float32 [n, P] for int indices i [n] (a tensor) or a slice."""

    def __init__(self, store, starts: torch.Tensor, patch_len: int):
        self.store, self.starts, self.patch_len = store, starts, patch_len

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: torch.Tensor | slice) -> torch.Tensor:
        return self.store.gather(self.starts[i], self.patch_len)

    def fingerprint(self) -> str:
        """What the patches are: the store (its cache file is named by the source's files and the preprocessing;
        a store in memory by its values), the patch length and the starts."""
        store = self.store.path.name if self.store.path is not None else arrays_fingerprint(self.store.data())
        return cache_key([str(store), self.patch_len, arrays_fingerprint(self.starts.numpy())], n=64)


class EEGTokenDataModule(TokenizerSequences):
    """Next-patch prediction on EEG tokens: one sequence per channel of a recording, [BOS] one token per
    consecutive, non-overlapping patch [EOS], PAD to the longest (at most `max_patches` patches: longer channels are
    cut into several sequences). Recordings split by recording as datamodules/eeg.py splits (same seed), normalized
    as the tokenizer was (its DataMetadata: normalization and rate; patch length from the checkpoint) into the
    memory-mapped row cache of datamodules/eeg.py (RowStore: recordings are read one channel at a time), encoded a
    batch at a time and cached under <data_dir>/tokens/ keyed by the checkpoint's sha256 and the patches.

    Batches add "patch": int64 [B, L], the index of each token's patch (−1 for specials and PAD), for the evaluator
    (lit_modules/forecast.py NextPatch: decode the predicted next token and compare with the true next patch, with
    the previous patch (persistence) and with the tokenizer's own reconstruction)."""

    EXPECTED, EXPERIMENT = "EEGTokenizer", "eeg"

    def __init__(
        self,
        source,
        tokenizer_ckpt: str | None = None,
        train_tokenizer: dict | None = None,
        data_dir: str = "data",
        max_patches: int = 64,
        ems_factor: float = 1e-3,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__(
            source, tokenizer_ckpt, train_tokenizer, data_dir, batch_size, eval_batch_size, split, seed, num_workers
        )
        self.max_patches, self.ems_factor = max_patches, ems_factor

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        from datamodules.eeg import RowStore
        from datamodules.eeg_signal import patch_offsets
        from lit_modules.forecast import NextPatch

        tokenizer = self.load_tokenizer()
        meta, P = tokenizer.metadata, tokenizer.patch_len
        if len(meta.rates) != 1:
            raise ValueError(
                f"{self.checkpoint}: trained at rates {meta.rates}; next-patch sequences need a "
                f"tokenizer of one rate (e.g. experiment=eeg)"
            )
        rate = float(meta.rates[0])
        # every channel normalized and resampled as the tokenizer's data was, in a memory-mapped cache (the
        # tokenizer's run's own, when its settings match)
        store = RowStore.build(
            self.source,
            self.data_dir,
            {"normalization": meta.normalization, "ems_factor": self.ems_factor, "rates": [rate]},
        )
        if store.n_recordings < 3:
            raise ValueError(f"{store.n_recordings} recordings cannot be split into train/val/test; need at least 3")
        starts, rows, n = [], {"train": [], "val": [], "test": []}, 0
        for split, idx in split_indices(store.n_recordings, self.split, self.seed).items():
            for i in idx.tolist():
                for row in np.flatnonzero(store.index["recording"] == i):  # its channels, in order
                    first = patch_offsets(int(store.index["length"][row]), P, P) + int(store.index["start"][row])
                    for start in range(0, len(first), self.max_patches):
                        chunk = first[start : start + self.max_patches]
                        starts.append(chunk)
                        rows[split].append(torch.arange(n, n + len(chunk)))
                        n += len(chunk)
        patches = StoredPatches(store, torch.from_numpy(np.concatenate(starts)), P)
        sfreq = torch.full((len(patches),), rate)
        tokens = cached_tokens(
            "eeg",
            self.checkpoint,
            patches,
            self.data_dir / "tokens",
            lambda: encode_batches(tokenizer.encode, patches, 4096, sfreq=sfreq),
            fingerprint=patches.fingerprint(),
        )
        self.vocab = Vocabulary.from_streams({"eeg": dict(tokenizer.streams)})
        (stream,) = tokenizer.streams
        token_ids = torch.from_numpy(tokens[stream][:, 0]) + self.vocab.range("eeg", stream).start
        self.code_vectors = {f"eeg/{stream}": tokenizer.code_vectors(stream).detach().float()}
        L = max(len(r) for split_rows in rows.values() for r in split_rows) + 2  # the longest sequence
        self.max_len = L
        eeg_type = self.vocab.range("eeg", stream).type_id
        self.splits = {split: self._sequences(r, token_ids, L, eeg_type) for split, r in rows.items()}
        self.evaluator = NextPatch(tokenizer, self.vocab, stream, patches, rate)

    @staticmethod
    def _sequences(rows: list[torch.Tensor], token_ids: torch.Tensor, L: int, eeg_type: int) -> TensorBatches:
        n = len(rows)
        ids = torch.full((n, L), SPECIALS.index("PAD"))
        types = torch.full((n, L), SPECIAL_TYPE)
        patch = torch.full((n, L), -1)
        for i, r in enumerate(rows):
            ids[i, 0], ids[i, 1 : len(r) + 1], ids[i, len(r) + 1] = (
                SPECIALS.index("BOS"),
                token_ids[r],
                SPECIALS.index("EOS"),
            )
            types[i, 1 : len(r) + 1] = eeg_type
            patch[i, 1 : len(r) + 1] = r
        valid = torch.arange(L)[None] < torch.tensor([len(r) + 2 for r in rows])[:, None]
        return TensorBatches(ids=ids, types=types, valid=valid, patch=patch)
