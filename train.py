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
import signal
import subprocess
import threading
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
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

import lit_modules  # noqa: F401 - registers the ${auto_precision:} resolver
from tokenizers.load import read_checkpoint

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


def _instantiate_list(specs) -> list:
    return [instantiate(c) for c in (specs or []) if c is not None]


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


EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + signal number, as a shell reports a killed job
STATUS = {143: "preempted", 130: "interrupted"}


class SignalStop:
    """While fit or test runs, SIGTERM (SLURM preemption, a sweep agent, `kill`) and a first Ctrl+C stop the run
    at the end of the current batch with last.ckpt saved at that step; train() then exits 143 or 130, W&B records
    the exit code, and `ckpt_path=<run dir>/checkpoints/last.ckpt` resumes exactly.

    SIGTERM: Lightning's own handler (installed when fit starts, calling this one too) raises SIGTERMException at
    the batch end and LatestCheckpoint saves; before fit's loop or after it nothing is in flight, so this handler
    exits at once. SIGINT: sets trainer.should_stop, so fit ends normally after this batch (or this validation) and
    LatestCheckpoint saves; a second Ctrl+C interrupts at once, as usual.

    SIGUSR1 under SLURM (`sbatch --signal=SIGUSR1@90`: the time limit is near): the same stop as SIGTERM, then
    `scontrol requeue`; the requeued job resumes from last.ckpt (`slurm_resume_path`). This replaces Lightning's
    auto-requeue (disabled in `slurm_plugins`), which saves from inside the signal handler, at any point of a step
    (half an optimizer update), and whose restart would prefer that file to the later last.ckpt."""

    def __init__(self, trainer: L.Trainer):
        self.trainer, self.signum, self.requeue, self._previous = trainer, None, False, {}

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            handlers = {signal.SIGTERM: self._on_sigterm, signal.SIGINT: self._on_sigint}
            if "SLURM_JOB_ID" in os.environ:
                handlers[signal.SIGUSR1] = self._on_sigusr1
            for signum, handler in handlers.items():
                self._previous[signum] = signal.signal(signum, handler)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def call(self, fn, *args, **kwargs) -> bool:
        """fn(*args, **kwargs) (trainer.fit or trainer.test); False when a signal stopped it."""
        try:
            fn(*args, **kwargs)
        except SIGTERMException:
            self.signum = signal.SIGTERM
        except SystemExit as e:  # Lightning turns a KeyboardInterrupt (a second Ctrl+C) into sys.exit(1)
            if not isinstance(e.__context__, KeyboardInterrupt):
                raise
            self.signum = signal.SIGINT
        return self.signum is None

    @property
    def exit_code(self) -> int | None:
        return EXIT_CODES.get(self.signum)

    def _on_sigterm(self, signum, frame) -> None:
        self.signum = signal.SIGTERM
        log.warning("SIGTERM received: stopping at the end of this batch and saving last.ckpt")
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:  # Lightning's loop is not running: nothing to save
            raise SystemExit(143)

    def _on_sigusr1(self, signum, frame) -> None:
        log.warning("SIGUSR1 (the SLURM time limit is near): stopping at the end of this batch, then requeueing")
        self.requeue = True
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's SIGTERM path: every rank stops at the same batch

    def requeue_job(self) -> None:
        job = os.environ["SLURM_JOB_ID"]
        if os.environ.get("SLURM_ARRAY_JOB_ID"):
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        try:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
            ok, why = done.returncode == 0, done.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            ok, why = False, repr(e)
        if ok:
            log.warning("requeued SLURM job %s: it resumes from last.ckpt when it starts again", job)
        else:
            log.error(
                "scontrol requeue %s failed (%s): resume by hand with ckpt_path=<run dir>/checkpoints/last.ckpt",
                job,
                why,
            )

    def _on_sigint(self, signum, frame) -> None:
        self.signum = signal.SIGINT
        signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))
        if self.trainer.state.fn != "fit":  # testing: nothing to save, stop now
            raise KeyboardInterrupt
        log.warning("Ctrl+C: stopping at the end of this batch and saving last.ckpt (press again to abort at once)")
        self.trainer.should_stop = True


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
        status = STATUS.get(e.code, "failed") if isinstance(e, SystemExit) else "failed"
        record.update(status=status, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        raise
    finally:
        if rank_zero_only.rank == 0:  # DDP: the other ranks' runs are the same run
            write_run_record(run_dir, record)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse, as the CUDA caching allocator does: no block is mmapped
    (M_MMAP_MAX 0) and the heap is never trimmed (M_TRIM_THRESHOLD −1). By default blocks over 32 MB (a
    [2, 256, 128, 128] fp32 activation) are mmapped and unmapped when freed, so every CPU training step page-faults
    and zeroes its large activations again (README, Benchmarks). The price: the process keeps its peak heap.
    Returns False where there is no glibc (macOS, musl)."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, -1))


def _fit_and_test(cfg: DictConfig, record: dict, extra_callbacks: list) -> float | None:
    print_config_tree(cfg, Path(cfg.paths.output_dir) if rank_zero_only.rank == 0 else None)
    if cfg.keep_freed_memory and not keep_freed_memory():
        log.info("keep_freed_memory: this C library has no glibc mallopt; its allocator is left as it is")
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model, optimizer=cfg.optimizer, scheduler=cfg.scheduler, _recursive_=False)
    callbacks = _instantiate_all(cfg.get("callbacks")) + list(extra_callbacks)
    loggers = start_loggers(cfg.get("logger"), cfg)
    if not loggers:  # LearningRateMonitor refuses to run without a logger; it has nothing to write to anyway
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    plugins = [*_instantiate_list(cfg.trainer.get("plugins")), *slurm_plugins()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)
    exit_code, value = None, None
    try:
        ckpt_path = cfg.ckpt_path if cfg.ckpt_path is not None else slurm_resume_path(Path(cfg.paths.output_dir))
        if ckpt_path is not None:
            check_checkpoint(ckpt_path)
        with SignalStop(trainer) as stop:
            if stop.call(trainer.fit, module, datamodule=datamodule, ckpt_path=ckpt_path):
                value = _record_fit(cfg, trainer, record)
                if cfg.test:
                    best = record["best_ckpt"]
                    if best:  # the checkpoint's state_dict holds the EMA weights; test exactly those
                        log.info("Testing the best checkpoint %s", best)
                        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
                    if stop.call(trainer.test, module, datamodule=datamodule):
                        record["metrics"].update(scalar_metrics(trainer.callback_metrics))
        if stop.signum is not None:
            exit_code = stop.exit_code
            last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
            log.warning(
                "Run stopped by %s at step %d; resume with ckpt_path=%s",
                signal.Signals(stop.signum).name,
                trainer.global_step,
                last,
            )
            record.update(step=trainer.global_step, last_ckpt=str(last) if last.is_file() else None)
            if exit_code == 143:
                _mark_wandb_preempting()
            if stop.requeue and rank_zero_only.rank == 0:
                stop.requeue_job()
            raise SystemExit(exit_code)
        return value if value is None or math.isfinite(value) else None
    except BaseException as e:
        exit_code = exit_code or (e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1)
        raise
    finally:
        import wandb

        wandb.finish(exit_code=exit_code)  # non-zero: W&B shows the run as failed, not finished


def slurm_plugins() -> list:
    """Under SLURM, Lightning's SLURM environment without its auto-requeue: SignalStop requeues instead."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def slurm_resume_path(run_dir: Path) -> str | None:
    """A requeued SLURM job (SLURM_RESTART_COUNT ≥ 1) resumes from its run dir's last.ckpt; the run dir must be the
    same on every start (`hydra.run.dir=outputs/<name>/$SLURM_JOB_ID`, README)."""
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) < 1:
        return None
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.warning(
            "SLURM restart %s of job %s: resuming from %s",
            os.environ["SLURM_RESTART_COUNT"],
            os.environ.get("SLURM_JOB_ID"),
            last,
        )
        return str(last)
    log.warning(
        "SLURM restart %s, but %s does not exist: starting from scratch (is hydra.run.dir the same on every start?)",
        os.environ["SLURM_RESTART_COUNT"],
        last,
    )
    return None


def check_checkpoint(path: str) -> None:
    """Refuse, before any work, a ckpt_path that cannot resume a run: missing, empty, corrupt, or no Lightning
    training state (a state_dict alone, e.g. from encode.py or another tool)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"ckpt_path={path} does not exist; nothing to resume from")
    ckpt = read_checkpoint(path, mmap=True)
    missing = [k for k in ("loops", "optimizer_states", "global_step") if k not in ckpt]
    if missing:
        raise ValueError(
            f"ckpt_path={path} holds weights but no training state to resume ({', '.join(missing)} "
            f"missing): resume from a run's checkpoints/last.ckpt"
        )


def _record_fit(cfg: DictConfig, trainer: L.Trainer, record: dict) -> float | None:
    """Fit's outcome into the run record; returns the optimized metric's best value."""
    record["metrics"].update(scalar_metrics(trainer.callback_metrics))
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    record.update(best_ckpt=best or None, last_ckpt=str(last) if last.is_file() else None, step=trainer.global_step)
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_score is not None:
        return float(trainer.checkpoint_callback.best_model_score)
    if cfg.optimized_metric in trainer.callback_metrics:
        return float(trainer.callback_metrics[cfg.optimized_metric])
    return None


def _mark_wandb_preempting() -> None:
    import wandb

    if wandb.run is not None:
        try:
            wandb.run.mark_preempting()
        except Exception as e:  # a logger failure never changes how the run ends
            log.warning("could not mark the W&B run as preempting: %r", e)


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
