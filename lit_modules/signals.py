"""How a run stops early and comes back: SIGTERM, Ctrl+C and SLURM's time-limit signal stop it at a batch boundary
with last.ckpt saved, a SLURM job requeues itself, and a requeued job resumes from its last.ckpt."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import NoReturn

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger("scitok")

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + signal number, as a shell reports a killed job


class SignalStop:
    """While fit or test runs, SIGTERM (SLURM preemption, a sweep agent, `kill`) and a first Ctrl+C stop the run
    at the end of the current batch with last.ckpt saved at that step; `exit` then ends the process with 143 or 130,
    W&B records the exit code, and `ckpt_path=<run dir>/checkpoints/last.ckpt` resumes exactly.

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

    def exit(self, step: int, last: Path) -> NoReturn:
        """After a signal stopped the run at `step`: say how to resume from `last` (last.ckpt), mark a preempted
        W&B run as such, requeue a SLURM job that asked for it (rank 0 only: one job), and exit 143 or 130."""
        log.warning(
            "Run stopped by %s at step %d; resume with ckpt_path=%s", signal.Signals(self.signum).name, step, last
        )
        if self.exit_code == EXIT_CODES[signal.SIGTERM]:
            _mark_wandb_preempting()
        if self.requeue and rank_zero_only.rank == 0:
            _requeue_slurm_job()
        raise SystemExit(self.exit_code)

    def _on_sigterm(self, signum, frame) -> None:
        self.signum = signal.SIGTERM
        log.warning("SIGTERM received: stopping at the end of this batch and saving last.ckpt")
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:  # Lightning's loop is not running: nothing to save
            raise SystemExit(EXIT_CODES[signal.SIGTERM])

    def _on_sigusr1(self, signum, frame) -> None:
        log.warning("SIGUSR1 (the SLURM time limit is near): stopping at the end of this batch, then requeueing")
        self.requeue = True
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's SIGTERM path: every rank stops at the same batch

    def _on_sigint(self, signum, frame) -> None:
        self.signum = signal.SIGINT
        signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))
        if self.trainer.state.fn != "fit":  # testing: nothing to save, stop now
            raise KeyboardInterrupt
        log.warning("Ctrl+C: stopping at the end of this batch and saving last.ckpt (press again to abort at once)")
        self.trainer.should_stop = True


def _requeue_slurm_job() -> None:
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
            "scontrol requeue %s failed (%s): resume by hand with ckpt_path=<run dir>/checkpoints/last.ckpt", job, why
        )


def _mark_wandb_preempting() -> None:
    import wandb

    if wandb.run is not None:
        try:
            wandb.run.mark_preempting()
        except Exception as e:  # a logger failure never changes how the run ends
            log.warning("could not mark the W&B run as preempting: %r", e)


def slurm_plugins() -> list:
    """Under SLURM, Lightning's SLURM environment without its auto-requeue: SignalStop requeues instead."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def slurm_resume_path(last: Path) -> str | None:
    """A requeued SLURM job (SLURM_RESTART_COUNT ≥ 1) resumes from `last`, its run dir's last.ckpt; the run dir must
    be the same on every start (`hydra.run.dir=outputs/<name>/$SLURM_JOB_ID`, README)."""
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) < 1:
        return None
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
