"""Checks of a composed run config before anything is built or loaded (train.py): a model config that reads a key its
data config lacks, an experiment's data settings given to another data config, trainer limits that train nothing.
Each refusal names the config keys and both sides: the config groups the command chose (experiment=…, model=…,
data=…, where Hydra ran the command) and the classes they build."""

from __future__ import annotations

from omegaconf import DictConfig


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
