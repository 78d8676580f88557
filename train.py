"""The one training entrypoint: `python train.py experiment=phaedra [overrides]`.

Prints the resolved config as a rich tree, seeds everything, fits, tests the best checkpoint (with
its EMA weights), always closes W&B, and returns `optimized_metric` for sweeps. Resume a stopped run
with `ckpt_path=<run dir>/checkpoints/last.ckpt`.

Every run leaves `<run dir>/run.json` (`RUN_RECORD`): its status (completed / failed, with the error),
the optimized metric's best value, the best and last checkpoints and the final val/test metrics. Grid
summaries (`--multirun`, sweep.GridSummary) and sweep.py read it. Under `--multirun` a failing job is
recorded and reported and the next job runs; the multirun exits non-zero at the end (sweep.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import traceback
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
        (save_to / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def _instantiate_all(group: DictConfig | None) -> list:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def start_loggers(group: DictConfig | None, cfg: DictConfig) -> list:
    """Build each logger and log the resolved config to it; a logger that fails is dropped with a warning,
    because a logger failure must never stop training."""
    started = []
    for name, spec in (group or {}).items():
        if spec is None or "_target_" not in spec:
            continue
        try:
            logger = instantiate(spec)
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            started.append(logger)
        except Exception as e:  # any failure: the run goes on without this logger
            log.warning("logger %r failed to start and is disabled for this run: %r", name, e)
    return started


RUN_RECORD = "run.json"


def write_run_record(run_dir: Path, record: dict) -> None:
    """<run_dir>/run.json, written to a temporary name and renamed: a reader never sees half a record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{RUN_RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, run_dir / RUN_RECORD)


def scalar_metrics(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def train(cfg: DictConfig, extra_callbacks: list | None = None) -> float | None:
    """Fit (and test) one run described by a composed config; returns cfg.optimized_metric's best value
    (None when it is not finite) and records the run in <run dir>/run.json, also when it fails.
    extra_callbacks: Lightning callbacks added to the config's (sweep.py's pruning)."""
    run_dir = Path(cfg.paths.output_dir)
    record = {"status": "running", "optimized_metric": cfg.optimized_metric, "value": None, "metrics": {}}
    try:
        value = _fit_and_test(cfg, record, extra_callbacks or [])
        record.update(status="completed", value=value)
        return value
    except BaseException as e:
        record.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                      error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        raise
    finally:
        if rank_zero_only.rank == 0:  # DDP: the other ranks' runs are the same run
            write_run_record(run_dir, record)


def _fit_and_test(cfg: DictConfig, record: dict, extra_callbacks: list) -> float | None:
    print_config_tree(cfg, Path(cfg.paths.output_dir) if rank_zero_only.rank == 0 else None)
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model, optimizer=cfg.optimizer, scheduler=cfg.scheduler, _recursive_=False)
    callbacks = _instantiate_all(cfg.get("callbacks")) + list(extra_callbacks)
    loggers = start_loggers(cfg.get("logger"), cfg)
    if not loggers:  # LearningRateMonitor refuses to run without a logger; it has nothing to write to anyway
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    try:
        if cfg.ckpt_path is not None and not Path(cfg.ckpt_path).is_file():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist; nothing to resume from")
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        record["metrics"].update(scalar_metrics(trainer.callback_metrics))
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        record.update(best_ckpt=best or None, last_ckpt=str(last) if last.is_file() else None,
                      step=trainer.global_step)
        value = None
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_score is not None:
            value = float(trainer.checkpoint_callback.best_model_score)
        elif cfg.optimized_metric in trainer.callback_metrics:
            value = float(trainer.callback_metrics[cfg.optimized_metric])
        if cfg.test:
            if best:  # the checkpoint's state_dict holds the EMA weights; test exactly those
                log.info("Testing the best checkpoint %s", best)
                module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
            trainer.test(module, datamodule=datamodule)
            record["metrics"].update(scalar_metrics(trainer.callback_metrics))
        return value if value is None or math.isfinite(value) else None
    finally:
        import wandb

        wandb.finish()


def relaunching_ddp(cfg: DictConfig) -> None:
    """Refuse DDP that Lightning would start by re-running the command line: under --multirun that command is the
    whole grid. Ranks given by SLURM tasks (hydra/launcher=slurm) or torchrun are fine."""
    strategy, devices = str(cfg.trainer.get("strategy", "auto")), cfg.trainer.get("devices", 1)
    if "ddp" not in strategy or "spawn" in strategy or devices in (1, "1", [0]):
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "LOCAL_RANK" in os.environ:
        return
    raise SystemExit(f"trainer.strategy={strategy} with trainer.devices={devices} inside --multirun: Lightning would "
                     "start the other ranks by running this command line again, which starts the whole grid again. "
                     "Use hydra/launcher=slurm (one task per GPU), or run the jobs one at a time (README: scaling out)")


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
