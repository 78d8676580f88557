"""Checks of a composed run config before anything is built or loaded (train.py): a model config that reads a key its
data config lacks, an experiment's data settings given to another data config, trainer limits that train nothing, a
model.init_from file that is not there.
Each refusal names the config keys and both sides: the config groups the command chose (experiment=…, model=…,
data=…, where Hydra ran the command) and the classes they build."""

from __future__ import annotations

import re
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError

from tokenizers.released import RELEASES, released_kind


def group_choices() -> dict[str, str]:
    """The config group options this run was composed from ({"experiment": "eeg", "model": "eeg", "data": "fields"});
    empty outside a Hydra app (the Compose API of tests and scripts records none)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {str(k): str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}


def chosen(*groups: str) -> str:
    """'experiment=eeg, model=eeg': the options chosen for `groups`; empty outside a Hydra app."""
    choices = group_choices()
    return ", ".join(f"{group}={choices[group]}" for group in groups if group in choices)


def model_side(cfg: DictConfig) -> str:
    """'model config experiment=eeg, model=eeg (tokenizers.eeg.EEGTokenizer)', or 'model tokenizers.eeg.EEGTokenizer'
    outside a Hydra app: what the run trains, by its configs and class."""
    model = cfg.model
    target = model.tokenizer.get("_target_") if "tokenizer" in model else model.get("_target_")
    named = chosen("experiment", "model")
    return f"model config {named} ({target})" if named else f"model {target}"


def this_run() -> str:
    """'this run (experiment=phaedra, model=phaedra)', or 'this run' outside a Hydra app."""
    named = chosen("experiment", "model")
    return f"this run ({named})" if named else "this run"


def data_side(cfg: DictConfig) -> str:
    """'data config data=fields (datamodules.fields.FieldDataModule)', or 'data datamodules.fields.FieldDataModule'
    outside a Hydra app: the data config and the datamodule it builds."""
    named, target = chosen("data"), cfg.data.get("_target_")
    return f"data config {named} ({target})" if named else f"data {target}"


def check_model_fits_data(cfg: DictConfig) -> None:
    """Refuse a config whose model (or any setting outside data) interpolates a data key the chosen data config lacks
    (`model.tokenizer.patch_len: ${data.patch_len}` on image data): OmegaConf would only say the key is missing, not
    that model and data do not belong together."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationKeyError as e:
        missing = re.search(r"Interpolation key '([^']+)' not found", str(e))
        if missing is None or not missing.group(1).startswith("data.") or str(e.full_key).startswith("data."):
            raise
        raise ValueError(
            f"{model_side(cfg)} cannot train on {data_side(cfg)}: {e.full_key} reads ${{{missing.group(1)}}}, which "
            f"this data config does not have. Use the data the model is made for (its experiment's), or a model made "
            f"for this data"
        ) from None


def build_datamodule(cfg: DictConfig):
    """instantiate(cfg.data); a setting the datamodule does not take (an experiment's `data:` block, written for its
    own data config, applied to another one) is refused naming the key, the data config and the experiment."""
    try:
        return instantiate(cfg.data)
    except InstantiationException as e:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(e.__cause__))
        if not isinstance(e.__cause__, TypeError) or unexpected is None:
            raise
        where = re.search(r"full_key: (\S+)", str(e))
        key = f"{where.group(1) if where else 'data'}.{unexpected.group(1)}"
        raise ValueError(
            f"{model_side(cfg)} cannot train on {data_side(cfg)}: {key} is set (by the experiment, for "
            f"the data it is made for, or on the command line), but this data config has no such setting. Use the "
            f"experiment's own data, or drop the key with ~{key}"
        ) from e


def check_trainer_limits(cfg: DictConfig) -> None:
    """A training run must train: trainer.max_steps > 0, or -1 with trainer.max_epochs > 0. max_steps=0 fits nothing
    and would end 'completed' with no checkpoint; -1 with max_epochs=-1 never ends; warmup_cosine needs a step count."""
    max_steps, max_epochs = cfg.trainer.get("max_steps", -1), cfg.trainer.get("max_epochs")
    stop_by_epochs = "or trainer.max_steps=-1 with trainer.max_epochs > 0 to train a number of epochs"
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps == 0 or max_steps < -1:
        raise ValueError(
            f"trainer.max_steps={max_steps}: a training run needs at least one optimizer step. Set trainer.max_steps "
            f"> 0, {stop_by_epochs}"
        )
    if max_epochs is not None and (max_epochs == 0 or max_epochs < -1):
        raise ValueError(f"trainer.max_epochs={max_epochs} trains nothing: set it > 0, or -1 for no epoch limit")
    if max_steps == -1 and max_epochs == -1:
        raise ValueError(
            "trainer.max_steps=-1 with trainer.max_epochs=-1: the run would never end. Set trainer.max_steps > 0, "
            f"{stop_by_epochs}"
        )


def check_init_from(cfg: DictConfig) -> None:
    """Refuse a model.init_from that names no file, before the data is prepared or a model built (a paper-size model
    takes a while), naming the file and, where the tokenizer takes released weights, the command that downloads them
    to that path. A Hub path (hf://…) is left to the download when the model is built."""
    init_from = cfg.model.get("init_from")
    if init_from is None or str(init_from).startswith("hf://") or Path(init_from).expanduser().is_file():
        return
    tokenizer = cfg.model.tokenizer
    kind = released_kind(get_class(tokenizer._target_), tokenizer)
    if kind is None:
        get = f"give a SciTok checkpoint of a {tokenizer._target_} (a run's checkpoints/last.ckpt)"
    else:
        release, path = RELEASES[kind], str(init_from)
        # the download lands at init_from when init_from ends with the file's path in the Hub repo
        if path.endswith("/" + release.hub_file):
            get = f"get {release.download_hint(path.removesuffix('/' + release.hub_file))}"
        else:
            get = f"get {release.download_hint()} and pass that path, or give a SciTok checkpoint"
    where = "" if Path(init_from).is_absolute() else f" (relative to {Path.cwd()}, where the run started)"
    raise FileNotFoundError(
        f"model.init_from={init_from} does not exist{where}: {this_run()} starts from those weights; {get}"
    )
