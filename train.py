"""The one training entrypoint: `python train.py experiment=phaedra [overrides]`.

Prints the resolved config as a rich tree, seeds everything, fits, tests the best checkpoint (with its EMA weights),
always closes W&B, and returns `optimized_metric` for sweeps. SIGTERM, Ctrl+C and the SLURM time limit stop a run at
a batch boundary with last.ckpt saved (lit_modules/signals.py); `ckpt_path=<run dir>/checkpoints/last.ckpt` resumes it.

Every run leaves `<run dir>/run.json` (lit_modules/run_record.py), also when it fails; grid summaries (`--multirun`,
sweep.GridSummary) and sweep.py read it. Under `--multirun` a failing job is recorded and reported and the next job
runs; the multirun exits non-zero at the end (sweep.py).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path

import hydra
import lightning as L
import rich
import rich.syntax
import rich.tree
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

import lit_modules  # noqa: F401 - registers the ${auto_precision:} resolver
from lit_modules.checkpoint_io import RUN_CONFIG, check_checkpoint
from lit_modules.loggers import start_loggers
from lit_modules.memory import keep_freed_memory
from lit_modules.preflight import (
    build_datamodule,
    check_init_from,
    check_model_fits_data,
    check_trainer_limits,
    this_run,
)
from lit_modules.run_record import RunRecord, record_fit, record_progress, scalar_metrics
from lit_modules.signals import SignalStop, slurm_plugins, slurm_resume_path

log = logging.getLogger("scitok")
# Our datamodules restore their position in the epoch themselves (LightningDataModule.state_dict), so
# Lightning's warning that a mid-epoch resume with a plain DataLoader is unreliable does not apply.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


def print_config_tree(cfg: DictConfig, save_to: Path | None = None) -> None:
    """A rich tree of the resolved config, one branch per top-level group; also written to save_to."""
    tree = rich.tree.Tree("config", guide_style="dim")
    for key, value in cfg.items():
        branch = tree.add(f"[bold]{key}")
        text = OmegaConf.to_yaml(value, resolve=True) if OmegaConf.is_config(value) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark"))
    rich.print(tree)
    if save_to is not None:
        save_to.mkdir(parents=True, exist_ok=True)
        (save_to / RUN_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))


def _instantiate_all(group: DictConfig | None) -> list:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def _instantiate_list(specs) -> list:
    return [instantiate(c) for c in (specs or []) if c is not None]


def train(cfg: DictConfig, extra_callbacks: list | None = None) -> float | None:
    """Fit (and test) one run described by a composed config; returns cfg.optimized_metric's best value
    (None when it is not finite) and records the run in <run dir>/run.json, also when it fails.
    extra_callbacks: Lightning callbacks added to the config's (sweep.py's pruning)."""
    with RunRecord(Path(cfg.paths.output_dir), cfg.optimized_metric) as record:
        value = _fit_and_test(cfg, record, extra_callbacks or [])
        record.update(status="completed", value=value)
    return value


def _fit_and_test(cfg: DictConfig, record: dict, extra_callbacks: list) -> float | None:
    run_dir = Path(cfg.paths.output_dir)
    last = run_dir / "checkpoints" / "last.ckpt"  # where callbacks.model_checkpoint saves the latest state
    # refusals that need nothing built: each names the config keys (and for a mismatch, model and data)
    check_model_fits_data(cfg)
    check_trainer_limits(cfg)
    check_init_from(cfg)
    ckpt_path = cfg.ckpt_path if cfg.ckpt_path is not None else slurm_resume_path(last)
    if ckpt_path is not None:
        check_checkpoint(ckpt_path, cfg.model, this_run())
    print_config_tree(cfg, run_dir if rank_zero_only.rank == 0 else None)
    if cfg.keep_freed_memory and not keep_freed_memory():
        log.info("keep_freed_memory: this C library has no glibc mallopt; its allocator is left as it is")
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    module = instantiate(cfg.model, optimizer=cfg.optimizer, scheduler=cfg.scheduler, _recursive_=False)
    callbacks = _instantiate_all(cfg.get("callbacks")) + list(extra_callbacks)
    loggers = start_loggers(cfg.get("logger"), cfg)
    if not loggers:  # LearningRateMonitor refuses to run without a logger; it has nothing to write to anyway
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    plugins = [*_instantiate_list(cfg.trainer.get("plugins")), *slurm_plugins()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)
    exit_code, value = None, None
    try:
        with SignalStop(trainer) as stop:
            if stop.call(trainer.fit, module, datamodule=datamodule, ckpt_path=ckpt_path):
                value = record_fit(record, trainer, last, cfg.optimized_metric)
                if cfg.test:
                    best = record["best_ckpt"]
                    if best:  # the checkpoint's state_dict holds the EMA weights; test exactly those
                        log.info("Testing the best checkpoint %s", best)
                        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
                    if stop.call(trainer.test, module, datamodule=datamodule):
                        record["metrics"].update(scalar_metrics(trainer.callback_metrics))
        if stop.signum is not None:
            record_progress(record, trainer, last)
            stop.exit(trainer.global_step, last)
        return value if value is None or math.isfinite(value) else None
    except BaseException as e:
        exit_code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1
        raise
    finally:
        import wandb

        wandb.finish(exit_code=exit_code)  # non-zero: W&B shows the run as failed, not finished


def relaunching_ddp(cfg: DictConfig) -> None:
    """Refuse DDP that Lightning would start by re-running the command line: under --multirun that command is the
    whole grid. Ranks given by SLURM tasks (hydra/launcher=slurm) or torchrun are fine."""
    strategy, devices = str(cfg.trainer.get("strategy", "auto")), cfg.trainer.get("devices", 1)
    if "ddp" not in strategy or "spawn" in strategy or devices in (1, "1", [0]):
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "LOCAL_RANK" in os.environ:
        return
    raise SystemExit(
        f"trainer.strategy={strategy} with trainer.devices={devices} inside --multirun: Lightning would "
        "start the other ranks by running this command line again, which starts the whole grid again. "
        "Use hydra/launcher=slurm (one task per GPU), or run the jobs one at a time (README: scaling out)"
    )


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return train(cfg)
    relaunching_ddp(cfg)
    try:  # one failing job of a grid must not take the others down: run.json records it, GridSummary reports it
        return train(cfg)
    except Exception:
        log.exception("job %s failed; the multirun goes on (its run.json has the error)", HydraConfig.get().job.num)
        return None


if __name__ == "__main__":
    main()
