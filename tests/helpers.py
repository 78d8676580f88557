"""What tests import: the experiments found in conf/experiment/, config composition, float32 tolerances, the
exact-resume comparison. Experiments are composed lazily, one at a time and once, so a test file that needs none
composes none. Fixtures live in conftest.py."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

import lit_modules  # noqa: F401 - registers the ${auto_precision:} resolver

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
# Smaller data for sources whose default is too big for a CPU test, by the data config's source `_target_`
# (still big enough for a train/val/test split by trajectory).
SMALL_DATA = {
    "datamodules.sources.EmbeddedFields": [
        "data.source.resolution=32",
        "data.source.n_traj=5",
        "data.source.n_frames=4",
    ],
    "datamodules.galaxies.EmbeddedGalaxies": ["data.source.n_objects=128", "data.source.spectrum_pixels=128"],
}
# Tokenizers above this size are checked on the meta device (shapes and dtypes, no values) instead of being run.
CPU_TEST_MAX_PARAMS = 20_000_000
TOKENIZER_MODULE = "lit_modules.tokenizer_module.TokenizerModule"

EPS32 = torch.finfo(torch.float32).eps


def f32_tolerance(reference: torch.Tensor, depth: int) -> float:
    """Largest difference expected between two float32 evaluations of one `depth`-layer computation that differ
    only in the order of their sums (other kernels, tiles, threads, CPUs): each layer adds a relative rounding
    error of at most ~sqrt(K)·eps for K-term dot products (64·eps covers K up to 4096), and errors add up
    over the layers. Relative to the largest value of `reference`."""
    return depth * 64 * EPS32 * float(reference.abs().max().clamp_min(1e-30))


def layer_depth(model: torch.nn.Module) -> int:
    """Number of modules that hold parameters of their own: the depth that rounding errors accumulate over."""
    return sum(1 for m in model.modules() if next(m.parameters(recurse=False), None) is not None)


def assert_same_ids_up_to_ties(
    ids: torch.Tensor, reference: torch.Tensor, vectors: torch.Tensor, codes: torch.Tensor, error: float
) -> None:
    """ids, reference: [N] the code ids two float32 paths chose for the same N vectors (other batch or tile shapes
    sum in another order); vectors: [N, D] the reference path's vectors; codes: [V, D]; error: a bound on how far
    (Euclidean) a vector may move between the paths. Where the ids differ, the vector must be that near a tie: a
    move of `error` changes its squared distance to a code x by at most 2·error·|v − x| + error², so the two codes'
    distances may differ by at most the sum of that for both. Rounding may pick the other code of a tie, nothing
    more; exact equality would hold only on the CPU the test was written on."""
    ids, reference = ids.reshape(-1), reference.reshape(-1)
    differ = (ids != reference).nonzero().squeeze(1)
    v = vectors.double()[differ]
    a, b = codes.double()[ids[differ]], codes.double()[reference[differ]]
    dist_a, dist_b = (v - a).norm(dim=1), (v - b).norm(dim=1)
    allowed = 2 * error * (dist_a + dist_b) + 2 * error**2
    gap = (dist_a**2 - dist_b**2).abs()
    assert bool((gap <= allowed).all()), f"{len(differ)} ids differ, not near ties: gaps {gap} > allowed {allowed}"


def assert_same_final_weights(
    full_dir: Path, resumed_dir: Path, steps: int, keys: tuple[str, ...] | None = None
) -> dict:
    """The last.ckpt of a resumed run equals the uninterrupted run's bit for bit: the same step and every tensor of
    `keys` (default: the weights the full checkpoint holds: state_dict, and current_model_state with EMA). Returns
    the full run's checkpoint."""
    full = torch.load(full_dir / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert full["global_step"] == resumed["global_step"] == steps
    keys = keys or tuple(k for k in ("state_dict", "current_model_state") if k in full)
    for key in keys:
        for name, value in full[key].items():
            assert torch.equal(value, resumed[key][name]), (key, name)
    return full


def compose_cfg(overrides: list[str], output_dir: Path, data_dir: Path) -> DictConfig:
    """The config `python train.py <overrides>` would run, with this test's output and data dirs; data sources
    listed in SMALL_DATA get their small settings (before the test's own overrides, which win)."""
    paths = [f"paths.output_dir={output_dir}", f"paths.data_dir={data_dir}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, *paths])
        small = SMALL_DATA.get(cfg.data.get("source", {}).get("_target_"), [])
        return compose(config_name="train", overrides=[*small, *overrides, *paths]) if small else cfg


def is_paper_size(cfg: DictConfig) -> bool:
    """Whether the experiment's tokenizer is too big to run in a CPU test (counted on the meta device)."""
    with torch.device("meta"):
        tokenizer = instantiate(cfg.model.tokenizer)
    return sum(p.numel() for p in tokenizer.parameters()) > CPU_TEST_MAX_PARAMS


@functools.cache
def describe(experiment: str) -> dict:
    """What an experiment is, from its composed debug=fast config (paths are placeholders: nothing is built from
    it): whether it trains a tokenizer and whether that one is CPU-sized, its data kind and data config, GAN, EMA,
    tiling, a stage-2 codebook fit (lit_modules/codebook.py)."""
    cfg = compose_cfg([f"experiment={experiment}", "debug=fast"], Path("/tmp/unused"), Path("/tmp/unused"))
    tokenizer = cfg.model._target_ == TOKENIZER_MODULE
    return {
        "tokenizer": tokenizer,
        "cpu": tokenizer and not is_paper_size(cfg),
        "kind": get_class(cfg.data.adapter._target_).kind if "adapter" in cfg.data else "tokens",
        "data": cfg.data,
        "gan": "gan" in cfg.model.get("loss", {}),
        "ema": cfg.callbacks.get("ema") is not None,
        "tiles": tokenizer and hasattr(get_class(cfg.model.tokenizer._target_), "reconstruct_tiled"),
        "codebook": cfg.callbacks.get("codebook") is not None,
    }


def cpu_experiments(**wanted: bool) -> list[str]:
    """The experiments whose tokenizer trains in a CPU test, those with every `describe` flag in `wanted` set as
    given: cpu_experiments(gan=True). Composes every experiment (once per session)."""
    return [e for e in EXPERIMENTS if describe(e)["cpu"] and all(describe(e)[k] == v for k, v in wanted.items())]


@dataclass
class Run:
    """A finished `train.py <experiment> debug=fast` run (W&B offline) and its config."""

    experiment: str
    cfg: DictConfig
    dir: Path
    value: float | None

    @property
    def last_ckpt(self) -> Path:
        return self.dir / "checkpoints" / "last.ckpt"

    @functools.cached_property
    def datamodule(self):
        """The run's datamodule, set up (built once: reading some data sets takes seconds)."""
        datamodule = instantiate(self.cfg.data)
        datamodule.prepare_data()
        datamodule.setup("fit")
        return datamodule
