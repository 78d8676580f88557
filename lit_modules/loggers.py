"""Loggers that never stop a run (one that fails to start is dropped), and the W&B logger: online when the user
is logged in or sets WANDB_MODE=online, offline otherwise."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("scitok")


def start_loggers(group: DictConfig | None, cfg: DictConfig) -> list[Logger]:
    """Build each logger of the config's `logger` group and log the resolved config `cfg` to it; a logger that fails
    is dropped with a warning, because a logger failure must never stop training."""
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


def wandb_is_online() -> bool:
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode == "online"
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import wandb

        return bool(wandb.Api(timeout=5).api_key)
    except Exception:  # no credentials, no network, no server: offline
        return False


def _multirun_job():
    """Hydra's runtime config of this job when it is part of a --multirun, else None (a single run, or a config
    composed without Hydra's app: tests, sweep.py's trials)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return HydraConfig.get()


def sweep_group() -> str | None:
    """${sweep_group:}: the W&B group of a --multirun's jobs, "<task>-<sweep dir name>", one per multirun (None for a
    single run)."""
    job = _multirun_job()
    if job is None:
        return None
    sweep_dir = Path(job.sweep.dir)
    return f"{sweep_dir.parent.name}-{sweep_dir.name}"


def run_name(task_name: str) -> str:
    """${run_name:${task_name}}: the task name, with the job number under --multirun ("phaedra-3")."""
    job = _multirun_job()
    return task_name if job is None else f"{task_name}-{job.job.num}"


OmegaConf.register_new_resolver("sweep_group", sweep_group, replace=True)
OmegaConf.register_new_resolver("run_name", run_name, replace=True)


def wandb_logger(**kwargs) -> WandbLogger:
    """WandbLogger(**kwargs) in online or offline mode as above (runs sync later with `wandb sync`).

    The mode goes to wandb.init directly: Lightning's `offline=True` sets WANDB_MODE=dryrun for the
    whole process, which wandb 0.31 no longer treats as offline.
    """
    return WandbLogger(mode="online" if wandb_is_online() else "offline", **kwargs)
