"""Guided hyperparameter search over any experiment, and the summary of `--multirun` grids.

    python sweep.py phaedra_lr_levels --trials 20                  # Optuna (TPE + median pruning), offline
    python sweep.py phaedra_lr_levels --trials 20 trainer.max_steps=500        # + overrides for every trial
    python sweep.py phaedra_lr_levels --storage postgresql://user@host/db    # many workers: the same command
                                                                               # on every machine adds workers
    python sweep.py phaedra_lr_levels --backend wandb                          # a W&B sweep + agent (a server)

A spec, conf/sweep/<name>.yaml, gives the base overrides (`experiment=phaedra`), the metric and its direction, the
number of trials and the search space (float / int, optionally log; choice). Every trial is a normal run of
train.py's `train` with the spec's overrides + the trial's `key=value` overrides, in its own run dir under the sweep
dir (`sweeps/<name>/trial-<n>`), with its own W&B run in the sweep's W&B group.

Optuna: the study lives in `--storage` (default: SQLite in the sweep dir), so re-running the command resumes it
(until `--trials` trials have finished, counting every worker's), and processes on one storage share one study.
The sampler's random state is seeded per trial from (spec seed, trial number), so resumed and parallel workers
never repeat a trial, and one fresh worker repeats its first trials exactly. A trial whose run fails, or whose
metric is NaN, is recorded as failed and the search goes on; a trial whose validation metric is worse than the
median of earlier trials at the same step is pruned (stopped at that validation: OptunaPruning below). Ctrl+C ends
the sweep with status 130 at any moment; the trial it stopped is marked failed ("interrupted", not counted). Trials
that a dead worker left running are marked failed when a worker starts (fail_stale_trials). At the end: the best
trial's parameters, run dir and checkpoint, and a table of every trial (printed with rich, written to the sweep dir
as trials.csv, with metric-vs-parameter plots).

`GridSummary` is the Hydra callback (conf/hydra/default.yaml) that does the same for `--multirun` grids: after
every job it rewrites <sweep dir>/summary.csv and summary.png from the jobs' run.json, and at the end prints the
table. (Not the hydra-optuna-sweeper plugin: its last release pins optuna<3, which breaks with SQLAlchemy 2.)
"""

from __future__ import annotations

import argparse
import csv
import difflib
import inspect
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lit_modules.run_record import RUN_RECORD
from lit_modules.signals import EXIT_CODES
from tokenizers.load import atomic_write

ROOT = Path(__file__).resolve().parent
log = logging.getLogger("scitok.sweep")

# ---------------------------------------------------------------------------------------------------------------
# Tables and plots of finished runs (shared by grids and guided searches)


def read_run(run_dir: Path) -> dict:
    """The run.json that train.train writes in every run dir; a run that left none (killed) reads as such."""
    path = Path(run_dir) / RUN_RECORD
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {"status": "no run.json (killed?)", "metrics": {}}
    except json.JSONDecodeError as e:
        return {"status": f"unreadable run.json ({e})", "metrics": {}}


def summary_columns(rows: list[dict], metric: str, limit: int = 8) -> list[str]:
    """The metric columns of a table: the optimized metric's best value over the run ("best <metric>", what the
    search optimizes) and its final value, then the runs' other top-level test/ and val/ metrics (one '/', e.g.
    test/nrmse; per-variable and per-stream ones stay in run.json), at most `limit` in all."""
    names = sorted(
        {
            k
            for r in rows
            for k in r.get("metrics", {})
            if k.count("/") == 1 and k.split("/")[0] in ("val", "test") and k != metric
        },
        key=lambda k: (k.split("/")[0] != "test", k),
    )
    return [f"best {metric}", metric, *names][:limit]


def with_best(metrics: dict, metric: str, value) -> dict:
    return {**metrics, f"best {metric}": value}


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_table(path: Path, rows: list[dict], params: list[str], metrics: list[str]) -> None:
    """rows: {"name", "status", "params": {key: value}, "metrics": {name: float}, "run_dir", "error"} -> CSV,
    atomically."""
    with atomic_write(path) as tmp, tmp.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["name", "status", *params, *metrics, "run_dir", "error"])
        for r in rows:
            out.writerow(
                [
                    r["name"],
                    r["status"],
                    *(r["params"].get(p) for p in params),
                    *(r["metrics"].get(m) for m in metrics),
                    r.get("run_dir"),
                    r.get("error"),
                ]
            )


def print_table(title: str, rows: list[dict], params: list[str], metrics: list[str], width: int = 4) -> None:
    """The table on the console: name, status, the parameters and the first `width` metric columns."""
    from rich.table import Table

    metrics = metrics[:width]
    table = Table(title=title)
    for column in ["name", "status", *params, *metrics]:
        table.add_column(column, justify="right" if column in params or column in metrics else "left")
    for r in rows:
        style = (
            None if r["status"] in ("completed", "COMPLETE") else "red" if "fail" in r["status"].lower() else "yellow"
        )
        table.add_row(
            r["name"],
            r["status"],
            *(format_value(r["params"].get(p)) for p in params),
            *(format_value(r["metrics"].get(m)) for m in metrics),
            style=style,
        )
    console().print(table)


def console():
    """rich's console; 160 columns when writing to a file or pipe (a log), not rich's default 80."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def numeric(values: Sequence) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def plot_metric(path: Path, rows: list[dict], params: list[str], metric: str) -> bool:
    """One panel per parameter: the metric of every run that has it against the parameter's value (log axis for a
    positive numeric parameter spanning more than a decade, categories otherwise). Failed runs are not drawn.
    Returns whether a plot was written."""
    done = [
        r for r in rows if isinstance(r["metrics"].get(metric), int | float) and math.isfinite(r["metrics"][metric])
    ]
    if not done or not params:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.4), squeeze=False)
    for ax, param in zip(axes[0], params, strict=True):
        values = [r["params"].get(param) for r in done]
        xs = numeric(values)
        if xs is None:  # categorical: in order of first appearance
            cats = list(dict.fromkeys(str(v) for v in values))
            xs = [cats.index(str(v)) for v in values]
            ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
        elif min(xs) > 0 and max(xs) / min(xs) > 10:
            ax.set_xscale("log")
        ax.scatter(xs, [r["metrics"][metric] for r in done])
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------------------------
# --multirun grids


def parse_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


class GridSummary(Callback):
    """Hydra callback: after every job of a --multirun, <sweep dir>/summary.csv (every job: its swept values, status,
    final metrics, run dir) and summary.png (the optimized metric against each swept parameter) are rewritten, so
    they are current even if the process dies; at the end the table is printed, and the multirun exits non-zero if
    a job failed (train.py records the failure and lets the next job run)."""

    def __init__(self, table: str = "summary.csv", plot: str = "summary.png"):
        self.table, self.plot = table, plot
        self.jobs: list[dict] | None = None  # None: not a multirun (Hydra calls on_job_end for single runs too)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.jobs = []

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if self.jobs is None:
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        record = read_run(run_dir)
        status = record["status"]
        if getattr(job_return.status, "name", "") == "FAILED":  # raised before train() wrote its record
            status = "failed"
            if not record.get("error"):
                record["error"] = repr(job_return._return_value)
        self.jobs.append(
            {
                "name": f"#{config.hydra.job.num}",
                "status": status,
                "overrides": list(job_return.overrides or []),
                "metrics": record.get("metrics", {}),
                "value": record.get("value"),
                "optimized_metric": record.get("optimized_metric") or config.get("optimized_metric"),
                "run_dir": str(run_dir),
                "error": record.get("error"),
            }
        )
        self.write(Path(config.hydra.sweep.dir))

    def swept(self) -> list[str]:
        """The override keys whose value differs between jobs (the grid's axes), in command-line order."""
        values: dict[str, set[str]] = {}
        for job in self.jobs:
            for key, value in map(parse_override, job["overrides"]):
                values.setdefault(key, set()).add(value)
        return [k for k, v in values.items() if len(v) > 1]

    def rows(self) -> tuple[list[dict], list[str], list[str], str]:
        params = self.swept()
        metric = next((j["optimized_metric"] for j in self.jobs if j["optimized_metric"]), "val/loss")
        rows = [
            {
                **job,
                "params": dict(map(parse_override, job["overrides"])),
                "metrics": with_best(job["metrics"], metric, job["value"]),
            }
            for job in self.jobs
        ]
        return rows, params, summary_columns(rows, metric), metric

    def write(self, sweep_dir: Path) -> None:
        rows, params, metrics, metric = self.rows()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_table(sweep_dir / self.table, rows, params, metrics)
        plot_metric(sweep_dir / self.plot, rows, params, f"best {metric}")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if not self.jobs:
            return
        rows, params, metrics, _ = self.rows()
        sweep_dir = Path(config.hydra.sweep.dir)
        print_table(f"{len(rows)} jobs: {sweep_dir}", rows, params, metrics)
        log.info("summary: %s, %s", sweep_dir / self.table, sweep_dir / self.plot)
        failed = [j for j in self.jobs if j["status"] != "completed"]
        for job in failed:
            log.error("job %s (%s) %s: %s", job["name"], " ".join(job["overrides"]), job["status"], job.get("error"))
        if failed:
            raise SystemExit(
                f"{len(failed)} of {len(self.jobs)} jobs did not complete (summary: {sweep_dir / self.table})"
            )


# ---------------------------------------------------------------------------------------------------------------
# Sweep specs


class SpecError(ValueError):
    pass


PARAM_TYPES = ("float", "int", "choice")
# Every key a spec may have, with what reads it; anything else is a typo that would otherwise be ignored silently
# (`trails: 2` ran the default 20 trials).
SPEC_KEYS = ("name", "overrides", "metric", "direction", "trials", "seed", "params", "pruner", "project")
PARAM_KEYS = ("type", "low", "high", "log", "values")


def refuse_unknown_keys(where: str, keys, allowed: Sequence[str]) -> None:
    """SpecError naming the first key of `keys` not in `allowed`, with the closest allowed one and all of them."""
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(f"{where}: unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")


def load_spec(name_or_path: str) -> DictConfig:
    """conf/sweep/<name>.yaml (or a path to a .yaml), checked: every parameter has a known type and its bounds."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = ROOT / "conf" / "sweep" / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (ROOT / "conf" / "sweep").glob("*.yaml"))
        raise SpecError(f"no sweep spec {path}; the shipped ones are {known}")
    spec = OmegaConf.load(path)
    refuse_unknown_keys(str(path), spec.keys(), SPEC_KEYS)
    spec.setdefault("name", path.stem)
    for key in ("metric", "direction", "params"):
        if key not in spec:
            raise SpecError(f"{path}: missing key {key!r} (see conf/sweep/phaedra_lr_levels.yaml)")
    if spec.direction not in ("minimize", "maximize"):
        raise SpecError(f"{path}: direction must be minimize or maximize, got {spec.direction!r}")
    for key, p in spec.params.items():
        refuse_unknown_keys(f"{path}: params.{key}", p.keys(), PARAM_KEYS)
        kind = p.get("type")
        if kind not in PARAM_TYPES:
            raise SpecError(f"{path}: params.{key}.type must be one of {PARAM_TYPES}, got {kind!r}")
        if kind == "choice" and not p.get("values"):
            raise SpecError(f"{path}: params.{key} (choice) needs a non-empty `values` list")
        if kind != "choice" and not ("low" in p and "high" in p and p.low < p.high):
            raise SpecError(f"{path}: params.{key} ({kind}) needs low < high, got {p.get('low')}, {p.get('high')}")
    if spec.get("pruner"):  # the keyword arguments of optuna's MedianPruner
        import optuna

        pruner_keys = tuple(inspect.signature(optuna.pruners.MedianPruner).parameters)
        refuse_unknown_keys(f"{path}: pruner", spec.pruner.keys(), pruner_keys)
    spec.setdefault("overrides", [])
    spec.setdefault("trials", 20)
    spec.setdefault("seed", 0)
    if spec.seed is not None and (type(spec.seed) is not int or spec.seed < 0):
        raise SpecError(f"{path}: seed must be an integer >= 0 or null (a random search), got {spec.seed!r}")
    return spec


def override_value(value) -> str:
    """A sampled value in Hydra's override grammar: lists as [a,b], strings quoted when they are not plain."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and not value.replace("_", "").replace("-", "").replace(".", "").isalnum():
        return json.dumps(value)
    return str(value)


def trial_overrides(params: dict) -> list[str]:
    """{key: value} -> Hydra `key=value` overrides (never --key=value)."""
    return [f"{key}={override_value(value)}" for key, value in params.items()]


# ---------------------------------------------------------------------------------------------------------------
# One trial: a train.py run composed in this process


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def run_trial(
    spec: DictConfig, base: list[str], params: dict, run_dir: Path, group: str, name: str, callbacks: list | None = None
) -> tuple[float | None, dict]:
    """Train one trial: the spec's overrides, then the user's, then the trial's; its own run dir and W&B run (in
    the sweep's group). Returns (train's value, the run record)."""
    import train

    cfg = compose(
        [
            *spec.overrides,
            *base,
            *trial_overrides(params),
            f"paths.output_dir={run_dir}",
            f"optimized_metric={spec.metric}",
        ]
    )
    if cfg.get("logger") and cfg.logger.get("wandb"):
        cfg.logger.wandb.group, cfg.logger.wandb.name = group, name
    checkpoint = (cfg.get("callbacks") or {}).get("model_checkpoint")
    if checkpoint and checkpoint.get("monitor"):  # "best" in the spec's direction
        checkpoint.mode = "max" if spec.direction == "maximize" else "min"
    value = train.train(cfg, extra_callbacks=callbacks or [])
    return value, read_run(run_dir)


# ---------------------------------------------------------------------------------------------------------------
# Optuna


class OptunaPruning(L.Callback):
    """Reports the monitored metric to the Optuna trial after every validation and stops the run at the first
    validation where the pruner says so: trainer.should_stop, not an exception through Lightning, so the run ends
    normally with its checkpoints, run.json and W&B run; the objective then marks the trial pruned."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.metric])
        self.trial.report(value, step=trainer.global_step)
        if self.trial.should_prune():
            self.pruned_at = trainer.global_step
            log.warning(
                "trial %d pruned at step %d: %s = %.4g is worse than the median of earlier trials there",
                self.trial.number,
                trainer.global_step,
                self.metric,
                value,
            )
            trainer.should_stop = True


def suggest(trial, params: DictConfig) -> dict:
    out = {}
    for key, p in params.items():
        if p.type == "float":
            out[key] = trial.suggest_float(key, p.low, p.high, log=bool(p.get("log", False)))
        elif p.type == "int":
            out[key] = trial.suggest_int(key, p.low, p.high, log=bool(p.get("log", False)))
        else:
            values = OmegaConf.to_container(p["values"])
            picked = trial.suggest_categorical(key, [json.dumps(v) if isinstance(v, list) else v for v in values])
            out[key] = json.loads(picked) if isinstance(picked, str) and picked.startswith("[") else picked
    return out


def trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial `number` of a spec seeded `seed` (mixed: neighbouring trials get unrelated
    streams)."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def trial_seeded_tpe(seed: int | None):
    """Optuna's TPE sampler, with its random state seeded for each trial from (spec seed, trial number).

    Not one sampler seeded once per process: every start (a resume, a second worker) replayed the same random
    stream, so a resumed sweep re-ran its first trials and two workers proposed identical trials in pairs. The
    storage hands out each trial number once, over every worker and every resume, so no two trials share a random
    state, no worker identity is needed, and a single fresh worker repeats its first trials exactly (seed=None:
    random every time). TPE keeps no other state between trials (it re-reads the study), so a fresh one per trial
    changes nothing else."""
    import optuna

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        def __init__(self):
            self.tpe = optuna.samplers.TPESampler(seed=seed)

        def before_trial(self, study, trial) -> None:  # optuna calls this first, with the trial's number
            self.tpe = optuna.samplers.TPESampler(seed=None if seed is None else trial_seed(seed, trial.number))
            self.tpe.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.tpe.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.tpe.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.tpe.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self.tpe.after_trial(study, trial, state, values)

    return TrialSeededTPE()


# A running trial's worker writes a heartbeat into the storage every HEARTBEAT_S; a RUNNING trial without one for
# GRACE_S belongs to a dead worker (killed, crashed, its machine lost) and is marked failed.
HEARTBEAT_S, GRACE_S = 30, 120


def this_machine() -> str:
    """Where a process id names one process: the host name, and on Linux the PID namespace (containers on one host
    can share a host name, never their pids)."""
    try:
        return f"{socket.gethostname()} {os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return socket.gethostname()


def worker_is_gone(worker: dict | None) -> bool:
    """Whether the worker that started a trial has surely exited: it ran on this machine and its pid is gone. Any
    other case (another machine, a pid that exists, maybe reused) is left to the heartbeat: a live worker's trial is
    never failed."""
    if not worker or worker.get("machine") != this_machine():
        return False
    try:
        os.kill(worker["pid"], 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


def describe_worker(worker: dict | None) -> str:
    return f"pid {worker['pid']} on {worker['machine'].split()[0]}" if worker else "unknown worker"


def log_stale_trial(study, trial) -> None:
    """Optuna's heartbeat_stale_trial_callback: it has just marked `trial` failed."""
    log.warning(
        "trial %d was left running by %s, silent for over %d s: marked failed",
        trial.number,
        describe_worker(trial.user_attrs.get("worker")),
        GRACE_S,
    )


def fail_stale_trials(study) -> None:
    """Mark failed, naming each in the log, the trials that dead workers left RUNNING: at once when the worker ran on
    this machine and its process is gone (a killed sweep restarted at once would otherwise wait GRACE_S), else once
    its heartbeat is GRACE_S old (optuna's check, which also runs before every trial)."""
    import optuna
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker_is_gone(worker):
            try:
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:  # another worker starting now failed it first
                continue
            log.warning(
                "trial %d was left running by %s, which has exited: marked failed",
                trial.number,
                describe_worker(worker),
            )
    optuna.storages.fail_stale_trials(study)


def open_study(spec: DictConfig, storage: str, study_name: str):
    """Create the study or load it (a re-run resumes it; several workers share it), with a heartbeat for every
    running trial (fail_stale_trials)."""
    import optuna

    # the heartbeat (stale trials of killed workers marked failed) is "experimental" in optuna 5; we rely on it
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    import sqlalchemy.exc

    for attempt in range(5):
        try:  # two workers on a new database at once: both create its schema, one of them loses the race
            rdb = optuna.storages.RDBStorage(
                storage,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=log_stale_trial,
                engine_kwargs={"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {},
            )
            break
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))  # the other worker finishes the schema; this one then finds it
    pruner = optuna.pruners.MedianPruner(**(OmegaConf.to_container(spec.pruner) if spec.get("pruner") else {}))
    sampler = trial_seeded_tpe(spec.seed)
    for attempt in range(5):  # two workers starting at once: one creates, the other loads
        try:
            return optuna.create_study(
                study_name=study_name,
                storage=rdb,
                direction=spec.direction,
                sampler=sampler,
                pruner=pruner,
                load_if_exists=True,
            )
        except optuna.exceptions.DuplicatedStudyError:
            time.sleep(0.5 * (attempt + 1))
    raise RuntimeError(f"could not create or load study {study_name!r} in {storage}")


def finished(study) -> int:
    """Trials that count toward --trials: complete, pruned or failed, but not the failed ones that a signal stopped
    (Ctrl+C, SIGTERM): their parameters were never judged."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return sum(not t.user_attrs.get("interrupted") for t in done)


def interruption(e: BaseException) -> str | None:
    """The signal behind an exception that stops a trial: Ctrl+C's KeyboardInterrupt, or train's SystemExit(130 or
    143) after a signal stopped its run at a batch end (lit_modules/signals.py). None for a failure."""
    if isinstance(e, KeyboardInterrupt):
        return "SIGINT"
    if isinstance(e, SystemExit):
        return next((signal.Signals(s).name for s, code in EXIT_CODES.items() if code == e.code), None)
    return None


class CtrlC:
    """While a sweep runs, Ctrl+C raises KeyboardInterrupt as usual (it stops whatever runs: a trial's setup, the
    sampler, a storage call) and is also remembered, because a KeyboardInterrupt can be dropped on the way: one
    raised in a finalizer (Lightning's Profiler.__del__, in optuna's gc.collect after a trial) is only printed, and
    the sweep went on to its last trial and exited 0. During a trial's fit, train's own handler (SignalStop) takes
    over: it stops at the batch end, saves last.ckpt and raises SystemExit(130)."""

    def __init__(self):
        self.pressed, self.previous = False, None

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self.previous = signal.signal(signal.SIGINT, self.on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def on_sigint(self, signum, frame) -> None:
        self.pressed = True
        raise KeyboardInterrupt


def run_optuna(
    spec: DictConfig,
    base: list[str],
    trials: int,
    sweep_dir: Path,
    storage: str | None = None,
    study_name: str | None = None,
    before: Callable | None = None,
):
    """Run trials until the study has `trials` finished ones (complete, pruned or failed, counted over every worker
    on the storage; `finished`). Returns the study. `before(study)` runs once the study is open (tests enqueue
    trials there).

    Ctrl+C, at any moment, ends the sweep with SystemExit(130) (a SIGTERM during a trial's fit: 143): the trial in
    flight is marked failed and "interrupted", which does not count toward `trials`, so the same command goes on
    with fresh trials. Trials that dead workers left running are marked failed at the start (fail_stale_trials)."""
    import optuna
    from optuna.trial import TrialState

    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    study = open_study(spec, storage, study_name or spec.name)
    fail_stale_trials(study)
    if before is not None:
        before(study)
    log.info("study %r in %s: %d of %d trials finished", study.study_name, storage, finished(study), trials)
    worker = {"machine": this_machine(), "pid": os.getpid()}  # who runs a trial, for fail_stale_trials
    in_flight = {}  # this worker's current trial

    def objective(trial) -> float:
        in_flight["trial"] = trial
        trial.set_user_attr("worker", worker)
        try:
            return run(trial)
        except BaseException as e:
            if interruption(e):  # a trial the user stopped: its parameters were not judged
                trial.set_user_attr("interrupted", interruption(e))
            raise

    def run(trial) -> float:
        if ctrl_c.pressed:  # Ctrl+C while optuna created this trial, and dropped on the way: do not start it
            raise KeyboardInterrupt
        params = suggest(trial, spec.params)
        run_dir = sweep_dir / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        pruning = OptunaPruning(trial, spec.metric)
        log.info("trial %d: %s", trial.number, " ".join(trial_overrides(params)))
        value, record = run_trial(
            spec,
            base,
            params,
            run_dir,
            group=f"sweep-{study.study_name}",
            name=f"{spec.name}-trial{trial.number}",
            callbacks=[pruning],
        )
        trial.set_user_attr("best_ckpt", record.get("best_ckpt"))
        if pruning.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at step {pruning.pruned_at}")
        if value is None:  # train returns None for a NaN/inf metric: recorded as failed, the search goes on
            log.warning("trial %d: %s is not finite; recorded as failed", trial.number, spec.metric)
            return float("nan")
        return value

    def enough(study, trial) -> None:  # optuna calls it once a trial is recorded
        in_flight.clear()
        if finished(study) >= trials:
            study.stop()

    with CtrlC() as ctrl_c:
        try:
            while not ctrl_c.pressed and finished(study) < trials:
                # catch: a trial whose run raises is recorded as FAIL (with the error in the log) and the next starts
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[enough], gc_after_trial=True)
        except BaseException as e:
            # optuna fails the trial on a KeyboardInterrupt but lets train's SystemExit(130/143) pass with the trial
            # still RUNNING: fail it here (a no-op when optuna did, or when the signal came between trials)
            trial = in_flight.get("trial")
            if (
                trial is not None
                and study.tell(trial, state=TrialState.FAIL, skip_if_finished=True).state.name == "FAIL"
            ):
                why = interruption(e)
                log.warning(
                    "trial %d stopped by %s: marked failed%s (run dir: %s)",
                    trial.number,
                    why or repr(e),
                    ", not counted toward --trials; the same command goes on with new trials" if why else "",
                    trial.user_attrs.get("run_dir"),
                )
            if isinstance(e, KeyboardInterrupt):
                raise SystemExit(EXIT_CODES[signal.SIGINT]) from e
            raise
    if ctrl_c.pressed:  # a Ctrl+C that was dropped on the way, between trials
        raise SystemExit(EXIT_CODES[signal.SIGINT])
    return study


def trial_rows(study, study_metric: str) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        run_dir = t.user_attrs.get("run_dir")
        record = read_run(Path(run_dir)) if run_dir else {}
        rows.append(
            {
                "name": f"trial-{t.number}",
                "status": f"{t.state.name} ({t.user_attrs['interrupted']})"
                if "interrupted" in t.user_attrs
                else t.state.name,
                "params": t.params,
                "metrics": with_best(record.get("metrics", {}), study_metric, t.value),
                "run_dir": run_dir,
                "error": record.get("error"),
            }
        )
    return rows


def report_optuna(study, spec: DictConfig, sweep_dir: Path) -> dict | None:
    rows = trial_rows(study, spec.metric)
    params = list(spec.params)
    metrics = summary_columns([{"metrics": r["metrics"]} for r in rows], spec.metric)
    write_table(sweep_dir / "trials.csv", rows, params, metrics)
    plot_metric(sweep_dir / "trials.png", rows, params, f"best {spec.metric}")
    print_table(f"study {study.study_name}: {len(rows)} trials ({sweep_dir})", rows, params, metrics)
    try:
        best = study.best_trial
    except ValueError:  # no completed trial
        log.error("no trial completed; see the failed trials' run.json under %s", sweep_dir)
        return None
    result = {
        "trial": best.number,
        "value": best.value,
        "params": best.params,
        "run_dir": best.user_attrs.get("run_dir"),
        "checkpoint": best.user_attrs.get("best_ckpt"),
    }
    console().print(
        f"[bold]best trial {best.number}[/]: {spec.metric} = {best.value:.5g}\n"
        f"  overrides:  {' '.join(trial_overrides(best.params))}\n"
        f"  run dir:    {result['run_dir']}\n  checkpoint: {result['checkpoint']}"
    )
    (sweep_dir / "best.json").write_text(json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------------------------------------------------------
# W&B sweeps


def wandb_sweep_config(spec: DictConfig, method: str = "bayes") -> dict:
    """The W&B sweep config of a spec (https://docs.wandb.ai/guides/sweeps/define-sweep-configuration)."""
    parameters = {}
    for key, p in spec.params.items():
        if p.type == "choice":
            parameters[key] = {"values": OmegaConf.to_container(p["values"])}
        else:
            entry = {"min": p.low, "max": p.high}
            if p.type == "float":
                entry["distribution"] = "log_uniform_values" if p.get("log") else "uniform"
            else:
                entry["distribution"] = "q_log_uniform_values" if p.get("log") else "int_uniform"
            parameters[key] = entry
    return {
        "name": spec.name,
        "method": method,
        "metric": {"name": spec.metric, "goal": spec.direction},
        "parameters": parameters,
    }


def wandb_trial_params(spec: DictConfig, config: dict) -> dict:
    """The agent's run config -> {key: value} of the spec's parameters (ints cast: q_log_uniform gives floats)."""
    missing = [k for k in spec.params if k not in config]
    if missing:
        raise KeyError(f"the W&B agent's config lacks the sweep parameters {missing}; got {sorted(config)}")
    return {k: int(round(config[k])) if spec.params[k].type == "int" else config[k] for k in spec.params}


def run_wandb(
    spec: DictConfig,
    base: list[str],
    trials: int,
    sweep_dir: Path,
    api=None,
    sweep_id: str | None = None,
    method: str = "bayes",
) -> str:
    """Create the W&B sweep (or join `sweep_id`) and run `trials` trials of it with wandb.agent, each a train run
    with the sampled values as `key=value` overrides. `api`: the wandb module (tests pass a fake)."""
    from lit_modules.loggers import wandb_is_online

    if api is None:
        if not wandb_is_online():
            raise SystemExit(
                "--backend wandb needs a W&B server: log in (`wandb login`, or WANDB_API_KEY and "
                "WANDB_BASE_URL for a local server). Offline, use the default --backend optuna."
            )
        import wandb as api
    sweep_id = sweep_id or api.sweep(wandb_sweep_config(spec, method), project=spec.get("project", "scitok"))
    log.info("W&B sweep %s", sweep_id)
    count = {"n": 0}

    def trial() -> None:
        run = api.init(group=f"sweep-{sweep_id}")
        params = wandb_trial_params(spec, dict(run.config))
        run_dir = sweep_dir / f"wandb-{run.id}"
        count["n"] += 1
        try:  # the agent's run is the active wandb run: train's WandbLogger logs into it
            run_trial(spec, base, params, run_dir, group=f"sweep-{sweep_id}", name=f"{spec.name}-{run.id}")
        finally:
            api.finish()

    api.agent(sweep_id, function=trial, count=trials, project=spec.get("project", "scitok"))
    return sweep_id


# ---------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return cli(argv)
    except KeyboardInterrupt:  # Ctrl+C outside the trials (starting, the final report): the status a shell expects
        log.warning("interrupted")
        return EXIT_CODES[signal.SIGINT]


def cli(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("spec", help="conf/sweep/<spec>.yaml (or a path to a spec)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every trial (key=value)")
    parser.add_argument("--trials", type=int, default=None, help="finished trials to reach (default: the spec's)")
    parser.add_argument("--backend", choices=("optuna", "wandb"), default="optuna")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite in the sweep dir)")
    parser.add_argument("--study-name", default=None, help="Optuna study name (default: the spec's name)")
    parser.add_argument("--sweep-dir", default=None, help="where trials run (default: sweeps/<spec name>)")
    parser.add_argument("--sweep-id", default=None, help="W&B: join this sweep instead of creating one")
    args = parser.parse_intermixed_args(argv)  # overrides before or after the options
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    bad = [o for o in args.overrides if o.startswith("-") or "=" not in o]
    if bad:
        parser.error(f"overrides are Hydra's key=value (never --key=value): {bad}")
    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        parser.error(str(e))
    trials = args.trials or int(spec.trials)
    sweep_dir = Path(args.sweep_dir or Path("sweeps") / spec.name)
    if args.backend == "wandb":
        run_wandb(spec, args.overrides, trials, sweep_dir, sweep_id=args.sweep_id)
        return 0
    study = run_optuna(spec, args.overrides, trials, sweep_dir, args.storage, args.study_name)
    return 0 if report_optuna(study, spec, sweep_dir) is not None else 1


if __name__ == "__main__":
    sys.exit(main())
