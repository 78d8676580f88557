"""Sweeps: --multirun grids (one run dir and W&B run per job, one W&B group, summary table and plot, a failing job
reported while the others run), sweep.py's Optuna backend (failed and pruned trials, resume after a kill, two workers
on one storage) and its W&B backend against a fake W&B API."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import sqlalchemy.exc
from omegaconf import OmegaConf

import sweep
from tests.helpers import ROOT, SMALL_DATA, compose_cfg

SMALL_FIELDS = SMALL_DATA["datamodules.sources.EmbeddedFields"]
SPECS = sorted(p.stem for p in (ROOT / "conf" / "sweep").glob("*.yaml"))


def spec_file(tmp_path, **fields) -> Path:
    spec = {
        "overrides": ["experiment=phaedra"],
        "metric": "val/nrmse",
        "direction": "minimize",
        "trials": 3,
        "params": {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
        **fields,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(spec)))
    return path


@pytest.mark.parametrize("name", SPECS)
def test_every_shipped_spec_names_keys_of_its_experiment(name):
    spec = sweep.load_spec(name)
    cfg = compose_cfg([*spec.overrides, "debug=fast"], Path("/tmp/unused"), Path("/tmp/unused"))
    for key, p in spec.params.items():
        assert OmegaConf.select(cfg, key) is not None, f"{name}: {key} is not a key of {spec.overrides}"
        if p.type == "choice":  # every value composes as an override
            for value in p["values"]:
                compose_cfg(
                    [
                        *spec.overrides,
                        *sweep.trial_overrides({key: OmegaConf.to_container(OmegaConf.create({"v": value}))["v"]}),
                    ],
                    Path("/tmp/unused"),
                    Path("/tmp/unused"),
                )
    assert spec.metric.startswith("val/") and spec.direction in ("minimize", "maximize")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"direction": "down"}, "direction must be minimize or maximize"),
        (
            {"params": {"optimizer.lr": {"type": "loguniform", "low": 1, "high": 2}}},
            r"params.optimizer.lr.type must be",
        ),
        ({"params": {"optimizer.lr": {"type": "float", "low": 2, "high": 1}}}, r"needs low < high, got 2, 1"),
        ({"params": {"model.x": {"type": "choice"}}}, r"params.model.x \(choice\) needs a non-empty `values`"),
        # a typo is refused by name, not ignored (`trails: 2` ran the default 20 trials)
        (
            {"trails": 2},
            r"spec.yaml: unknown key 'trails' \(did you mean 'trials'\?\); allowed: name, overrides, metric, "
            r"direction, trials, seed, params, pruner, project$",
        ),
        ({"budget": 5}, r"unknown key 'budget'; allowed: name,"),
        (
            {"params": {"optimizer.lr": {"type": "float", "low": 1, "high": 2, "logg": True}}},
            r"params.optimizer.lr: unknown key 'logg' \(did you mean 'log'\?\); allowed: type, low, high, log, values",
        ),
        (
            {"pruner": {"n_startup_trial": 4}},
            r"pruner: unknown key 'n_startup_trial' \(did you mean 'n_startup_trials'",
        ),
        ({"seed": -1}, r"seed must be an integer >= 0 or null"),
    ],
)
def test_a_bad_spec_is_refused_by_name(tmp_path, fields, message):
    with pytest.raises(sweep.SpecError, match=message):
        sweep.load_spec(str(spec_file(tmp_path, **fields)))
    with pytest.raises(sweep.SpecError, match="no sweep spec .*the shipped ones are"):
        sweep.load_spec("no_such_spec")


def test_trial_values_become_hydra_overrides():
    assert sweep.trial_overrides(
        {"optimizer.lr": 0.001, "model.tokenizer.levels": [8, 5, 5], "a.b": True, "c": "relu", "d": "a b"}
    ) == ["optimizer.lr=0.001", "model.tokenizer.levels=[8,5,5]", "a.b=true", "c=relu", 'd="a b"']


# ---------------------------------------------------------------------------------------------------------------
# --multirun grid


def offline_run_info(run_dir: Path) -> dict:
    """The offline W&B run's group and name, read back with `wandb leet inspect --json`."""
    wandb_dir = next((run_dir / "wandb").glob("offline-run-*"))
    out = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(wandb_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    for line in out.stdout.splitlines():
        record = json.loads(line) if line.startswith("{") else {}
        if record.get("type") == "run":
            return record["run"]
    raise AssertionError(f"no run record in {wandb_dir}")


@pytest.mark.slow
def test_a_multirun_grid_runs_every_job_in_one_group_and_writes_a_summary(tmp_path, data_dir):
    sweep_dir = tmp_path / "grid"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    # the third learning rate is refused by the optimizer: that job fails, the others run
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--multirun",
            "experiment=phaedra",
            "debug=fast",
            "test=false",
            "optimizer.lr=1e-4,3e-4,-1",
            f"hydra.sweep.dir={sweep_dir}",
            f"paths.data_dir={data_dir}",
            *SMALL_FIELDS,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0, "a multirun with a failed job must exit non-zero"
    assert "1 of 3 jobs did not complete" in proc.stderr + proc.stdout
    with (sweep_dir / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["optimizer.lr"]) for r in rows] == [1e-4, 3e-4, -1]
    assert [r["status"] for r in rows] == ["completed", "completed", "failed"]
    assert all(float(r["val/nrmse"]) > 0 for r in rows[:2]) and rows[2]["val/nrmse"] == ""
    assert (sweep_dir / "summary.png").stat().st_size > 1000
    # each job its own run dir and W&B run; one group for the multirun
    for job in ("0", "1"):
        record = json.loads((sweep_dir / job / "run.json").read_text())
        assert record["status"] == "completed" and Path(record["last_ckpt"]).is_file()
    failed = json.loads((sweep_dir / "2" / "run.json").read_text())
    assert failed["status"] == "failed" and "lr, eps and weight_decay must be finite and >= 0" in failed["error"]
    runs = [offline_run_info(sweep_dir / job) for job in ("0", "1")]
    assert runs[0]["run_id"] != runs[1]["run_id"]
    assert runs[0]["run_group"] == runs[1]["run_group"] == f"{sweep_dir.parent.name}-{sweep_dir.name}"
    assert [r["display_name"] for r in runs] == ["phaedra-0", "phaedra-1"]


# ---------------------------------------------------------------------------------------------------------------
# Optuna


class PruneTrial(optuna.pruners.BasePruner):
    """Prunes one trial number at its first report (the median pruner's decision depends on the losses)."""

    def __init__(self, number: int):
        self.number = number

    def prune(self, study, trial) -> bool:
        return trial.number == self.number


def test_optuna_records_failed_and_pruned_trials_and_reports_the_best(tmp_path, data_dir, monkeypatch, caplog):
    spec = sweep.load_spec(str(spec_file(tmp_path)))
    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda **kw: PruneTrial(2))
    base = ["debug=fast", "logger=none", "test=false", f"paths.data_dir={data_dir}", *SMALL_FIELDS]

    def enqueue(study):
        for lr in (1e-3, -1.0, 1e-3):  # completes; fails (the optimizer refuses it); is pruned
            study.enqueue_trial({"optimizer.lr": lr})

    with caplog.at_level(logging.INFO, logger="scitok.sweep"):
        study = sweep.run_optuna(spec, base, trials=3, sweep_dir=tmp_path / "sweep", before=enqueue)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "PRUNED"]
    assert "trial 2 pruned at step 3" in caplog.text
    pruned = json.loads((tmp_path / "sweep" / "trial-2" / "run.json").read_text())
    assert pruned["step"] == 3  # stopped at its first validation, of debug=fast's 6 steps
    best = sweep.report_optuna(study, spec, tmp_path / "sweep")
    assert best["trial"] == 0 and Path(best["checkpoint"]).is_file()
    assert best["value"] == pytest.approx(study.trials[0].value)
    with (tmp_path / "sweep" / "trials.csv").open() as f:
        assert [r["status"] for r in csv.DictReader(f)] == states
    assert json.loads((tmp_path / "sweep" / "best.json").read_text())["trial"] == 0


def test_a_nan_metric_is_a_failed_trial_and_the_search_goes_on(tmp_path, monkeypatch):
    """train returns None when the optimized metric is not finite: the trial is recorded as failed, the next runs."""
    values = iter([None, 0.5, 0.25])
    monkeypatch.setattr(sweep, "run_trial", lambda *args, **kwargs: (next(values), {}))
    spec = sweep.load_spec(str(spec_file(tmp_path)))
    study = sweep.run_optuna(spec, [], trials=3, sweep_dir=tmp_path / "sweep")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert study.best_trial.number == 2 and study.best_value == 0.25


def fake_trials(monkeypatch, seconds: float = 0.0) -> list[str]:
    """run_trial replaced by a trivial objective (the learning rate is the metric): the search, not training.
    Returns the list that gets the name of the thread that ran each trial."""
    threads = []

    def run_trial(spec, base, params, run_dir, group, name, callbacks=None):
        threads.append(threading.current_thread().name)
        time.sleep(seconds)
        return params["optimizer.lr"], {}

    monkeypatch.setattr(sweep, "run_trial", run_trial)
    return threads


def points(trials) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in trials]


def test_a_resumed_sweep_proposes_new_points_and_a_fresh_one_repeats_its_first(tmp_path, monkeypatch):
    """Every start used to seed its sampler from the spec alone, so the same command after Ctrl+C re-ran the first
    trials' parameters; the random state is now seeded from (spec seed, trial number)."""
    fake_trials(monkeypatch)
    spec = sweep.load_spec(str(spec_file(tmp_path)))
    first = points(sweep.run_optuna(spec, [], trials=2, sweep_dir=tmp_path / "a").trials)
    resumed = points(sweep.run_optuna(spec, [], trials=4, sweep_dir=tmp_path / "a").trials)  # a new sampler
    assert resumed[:2] == first and len(set(resumed)) == 4
    # a fresh study with the same seed proposes the same first trials; another seed, others
    assert points(sweep.run_optuna(spec, [], trials=2, sweep_dir=tmp_path / "b").trials) == first
    spec.seed = 1
    assert not set(points(sweep.run_optuna(spec, [], trials=2, sweep_dir=tmp_path / "c").trials)) & set(first)


def test_two_workers_on_one_storage_never_propose_the_same_trial(tmp_path, monkeypatch):
    """Two workers at once (threads here, processes in use) on one study: with one seed per process they proposed
    identical trials in pairs."""
    ran_in = fake_trials(monkeypatch, seconds=0.02)
    spec = sweep.load_spec(str(spec_file(tmp_path)))
    sweep_dir = tmp_path / "sweep"
    sweep.run_optuna(spec, [], trials=0, sweep_dir=sweep_dir)  # creates the study (and the SQLite tables) once
    start, errors = threading.Barrier(2), []

    def worker() -> None:
        start.wait()
        try:
            sweep.run_optuna(spec, [], trials=8, sweep_dir=sweep_dir)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    trials = optuna.load_study(study_name="spec", storage=f"sqlite:///{sweep_dir / 'study.db'}").trials
    assert len(trials) >= 8 and all(t.state.name == "COMPLETE" for t in trials)
    assert len(set(points(trials))) == len(trials), points(trials)
    assert len(set(ran_in)) == 2, "both workers ran trials"


def left_running(study, worker: dict) -> int:
    """A trial that `worker` started and left RUNNING, with one heartbeat (what a worker's heartbeat thread writes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna: "Heartbeat of storage is supposed to be used with Study.optimize"
        trial = study.ask()
    trial.set_user_attr("worker", worker)
    study._storage.record_heartbeat(trial._trial_id)
    return trial.number


def test_trials_of_dead_workers_are_failed_at_the_start_and_a_live_workers_kept(tmp_path, monkeypatch, caplog):
    fake_trials(monkeypatch)
    spec = sweep.load_spec(str(spec_file(tmp_path)))
    sweep_dir = tmp_path / "sweep"
    study = sweep.run_optuna(spec, [], trials=0, sweep_dir=sweep_dir)
    here = sweep.this_machine()
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()  # its pid is gone once it has been waited for
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        dead = left_running(study, {"machine": here, "pid": exited.pid})
        live = left_running(study, {"machine": here, "pid": alive.pid})
        elsewhere = left_running(study, {"machine": "node7 pid:[4026531836]", "pid": alive.pid + 1})
        with caplog.at_level(logging.WARNING, logger="scitok.sweep"):
            study = sweep.run_optuna(spec, [], trials=2, sweep_dir=sweep_dir)
    finally:
        alive.kill()
        alive.wait()
    states = {t.number: t.state.name for t in study.trials}
    assert states[dead] == "FAIL" and states[live] == "RUNNING" and states[elsewhere] == "RUNNING"
    assert f"trial {dead} was left running by pid " in caplog.text and "which has exited: marked failed" in caplog.text
    assert f"trial {live} " not in caplog.text and f"trial {elsewhere} " not in caplog.text
    # another machine's trial: failed once its heartbeat is older than the grace period (short here)
    monkeypatch.setattr(sweep, "GRACE_S", 1)
    time.sleep(2.5)  # SQLite's clock counts whole seconds
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scitok.sweep"):
        study = sweep.run_optuna(spec, [], trials=3, sweep_dir=sweep_dir)
    assert study.trials[elsewhere].state.name == "FAIL"
    assert f"trial {elsewhere} was left running by pid {alive.pid + 1} on node7, silent for over 1 s" in caplog.text


@pytest.mark.parametrize(
    ("stop", "code", "signal_name"),
    [
        (SystemExit(130), 130, "SIGINT"),  # train after Ctrl+C in fit: last.ckpt saved, SystemExit(130)
        (KeyboardInterrupt(), 130, "SIGINT"),  # Ctrl+C before fit (composing, loading data) or after it
        (SystemExit(143), 143, "SIGTERM"),  # train after SIGTERM in fit
    ],
)
def test_a_signal_during_a_trial_ends_the_sweep_with_its_code_and_fails_the_trial(
    tmp_path, monkeypatch, caplog, stop, code, signal_name
):
    values = iter([0.5, stop, 0.25, 0.125])

    def run_trial(*args, **kwargs):
        value = next(values)
        if isinstance(value, BaseException):
            raise value
        return value, {}

    monkeypatch.setattr(sweep, "run_trial", run_trial)
    spec = sweep.load_spec(str(spec_file(tmp_path)))
    sweep_dir = tmp_path / "sweep"
    with caplog.at_level(logging.WARNING, logger="scitok.sweep"), pytest.raises(SystemExit) as exit_:
        sweep.run_optuna(spec, [], trials=3, sweep_dir=sweep_dir)
    assert exit_.value.code == code
    study = optuna.load_study(study_name="spec", storage=f"sqlite:///{sweep_dir / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]  # not left RUNNING
    assert study.trials[1].user_attrs["interrupted"] == signal_name
    assert f"trial 1 stopped by {signal_name}: marked failed, not counted toward --trials" in caplog.text
    # the same command goes on: the interrupted trial does not count, so two more run
    study = sweep.run_optuna(spec, [], trials=3, sweep_dir=sweep_dir)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    rows = sweep.trial_rows(study, spec.metric)
    assert rows[1]["status"] == f"FAIL ({signal_name})"


@pytest.fixture
def sigint_caught_by_the_test():
    """While a test sends itself SIGINT: a handler that only counts, so a sweep that forgot to install its own cannot
    stop the test session."""
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    yield caught
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_between_trials_ends_the_sweep_with_130(tmp_path, monkeypatch, sigint_caught_by_the_test):
    fake_trials(monkeypatch)
    counted, sent = sweep.finished, []

    def finished(study) -> int:  # called between trials: Ctrl+C right after the first one is recorded
        n = counted(study)
        if n == 1 and not sent:
            sent.append(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return n

    monkeypatch.setattr(sweep, "finished", finished)
    spec = sweep.load_spec(str(spec_file(tmp_path)))
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exit_:
        sweep.run_optuna(spec, [], trials=3, sweep_dir=tmp_path / "sweep")
    assert exit_.value.code == 130 and sent and not sigint_caught_by_the_test
    study = optuna.load_study(study_name="spec", storage=f"sqlite:///{tmp_path / 'sweep' / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    assert signal.getsignal(signal.SIGINT) is handler  # the sweep put the previous handler back


def test_a_ctrl_c_that_a_library_drops_still_ends_the_sweep(tmp_path, monkeypatch, sigint_caught_by_the_test):
    """A KeyboardInterrupt raised in a finalizer is only printed (seen: Lightning's Profiler.__del__ during the gc
    after a trial, and the sweep ran to its last trial and exited 0): the sweep remembers the Ctrl+C itself."""
    calls = []

    def run_trial(*args, **kwargs):
        calls.append(1)
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:  # what a finalizer does with it
            pass
        return 0.5, {}

    monkeypatch.setattr(sweep, "run_trial", run_trial)
    spec = sweep.load_spec(str(spec_file(tmp_path)))
    with pytest.raises(SystemExit) as exit_:
        sweep.run_optuna(spec, [], trials=3, sweep_dir=tmp_path / "sweep")
    assert exit_.value.code == 130 and len(calls) == 1  # no trial after the Ctrl+C
    assert not sigint_caught_by_the_test  # the sweep's handler got it, not the test's


def sweep_command(spec: Path, sweep_dir: Path, data_dir: Path, trials: int) -> list[str]:
    return [
        sys.executable,
        "sweep.py",
        str(spec),
        "--trials",
        str(trials),
        "--sweep-dir",
        str(sweep_dir),
        "debug=fast",
        "logger=none",
        "test=false",
        f"paths.data_dir={data_dir}",
        *SMALL_FIELDS,
    ]


@pytest.mark.slow
def test_a_killed_sweep_resumes_its_study_and_two_workers_share_one(tmp_path, data_dir):
    spec, sweep_dir = spec_file(tmp_path, trials=3), tmp_path / "sweep"
    storage = f"sqlite:///{sweep_dir / 'study.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two workers on two cores
    first = subprocess.Popen(
        sweep_command(spec, sweep_dir, data_dir, 3),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        time.sleep(1)
        if not (sweep_dir / "study.db").is_file():
            continue
        try:
            study = optuna.load_study(study_name="spec", storage=storage)
        except (KeyError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            continue  # the file exists, the study (or the schema the worker is writing) not yet
        if any(t.state.name == "COMPLETE" for t in study.trials):
            break
    os.killpg(first.pid, signal.SIGKILL)  # killed in the middle of the search
    first.wait()
    before = optuna.load_study(study_name="spec", storage=storage).trials
    done_before = sum(t.state.name == "COMPLETE" for t in before)
    assert 1 <= done_before < 3
    # the same command, twice at once: both resume the one study, up to 3 + 2 finished trials
    second = subprocess.Popen(
        sweep_command(spec, sweep_dir, data_dir, 5),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    third = subprocess.run(
        sweep_command(spec, sweep_dir, data_dir, 5), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0 and third.returncode == 0, out + third.stderr
    trials = optuna.load_study(study_name="spec", storage=storage).trials
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(numbers)))  # one numbering, no duplicates
    assert [t.params for t in trials[: len(before)]] == [t.params for t in before]  # the first run's trials kept
    assert len(set(points(trials))) == len(trials)  # neither the resumed nor the second worker repeats a trial
    assert not [t.number for t in trials if t.state.name == "RUNNING"]  # the killed worker's trial: failed at start
    assert sum(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in trials) >= 5
    assert "best trial" in third.stdout
    assert {Path(t.user_attrs["run_dir"]).name for t in trials if t.state.name == "COMPLETE"} <= {
        p.name for p in sweep_dir.iterdir()
    }


# ---------------------------------------------------------------------------------------------------------------
# W&B sweeps, against a fake W&B API


class FakeWandb:
    """What sweep.run_wandb calls: sweep(config) -> id, agent(id, function, count) calls function count times, each
    with an init() whose run config holds the sampled values."""

    def __init__(self, samples: list[dict]):
        self.samples, self.configs, self.finished = samples, [], 0

    def sweep(self, config, project=None):
        self.configs.append(config)
        return "fake-sweep"

    def agent(self, sweep_id, function, count, project=None):
        assert sweep_id == "fake-sweep"
        for sample in self.samples[:count]:
            self.current = sample
            function()

    def init(self, group=None):
        return SimpleNamespace(config=dict(self.current), id=f"run{len(self.configs)}{self.finished}")

    def finish(self):
        self.finished += 1


def test_the_wandb_backend_builds_the_sweep_and_passes_key_value_overrides(tmp_path, monkeypatch):
    spec = sweep.load_spec(
        str(
            spec_file(
                tmp_path,
                params={
                    "optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
                    "model.tokenizer.amp_levels": {"type": "choice", "values": [256, 1024]},
                    "trainer.max_steps": {"type": "int", "low": 100, "high": 400},
                },
            )
        )
    )
    assert sweep.wandb_sweep_config(spec) == {
        "name": "spec",
        "method": "bayes",
        "metric": {"name": "val/nrmse", "goal": "minimize"},
        "parameters": {
            "optimizer.lr": {"min": 1e-4, "max": 3e-3, "distribution": "log_uniform_values"},
            "model.tokenizer.amp_levels": {"values": [256, 1024]},
            "trainer.max_steps": {"min": 100, "max": 400, "distribution": "int_uniform"},
        },
    }
    calls = []
    monkeypatch.setattr(
        sweep,
        "run_trial",
        lambda spec, base, params, run_dir, group, name, callbacks=None: calls.append(
            (base, sweep.trial_overrides(params), run_dir, group)
        ),
    )
    fake = FakeWandb(
        [
            {"optimizer.lr": 0.001, "model.tokenizer.amp_levels": 256, "trainer.max_steps": 200.0},
            {"optimizer.lr": 0.0002, "model.tokenizer.amp_levels": 1024, "trainer.max_steps": 300},
        ]
    )
    sweep.run_wandb(spec, ["debug=fast"], 2, tmp_path / "sweeps", api=fake)
    assert [c[1] for c in calls] == [
        ["optimizer.lr=0.001", "model.tokenizer.amp_levels=256", "trainer.max_steps=200"],
        ["optimizer.lr=0.0002", "model.tokenizer.amp_levels=1024", "trainer.max_steps=300"],
    ]
    assert all(c[0] == ["debug=fast"] and c[3] == "sweep-fake-sweep" for c in calls) and fake.finished == 2
    with pytest.raises(KeyError, match=r"lacks the sweep parameters \['trainer.max_steps'\]"):
        sweep.wandb_trial_params(spec, {"optimizer.lr": 0.001, "model.tokenizer.amp_levels": 256})


def test_the_wandb_backend_without_a_server_fails_fast(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "sweep.py", str(spec_file(tmp_path)), "--backend", "wandb"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "--backend wandb needs a W&B server" in proc.stderr
    assert time.time() - start < 60


def test_the_slurm_launcher_config_composes_to_submitit():
    """hydra/launcher=slurm (jobs as SLURM jobs) resolves to hydra-submitit-launcher's SLURM launcher, its job folder
    inside the sweep dir; nothing is submitted."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "hydra/launcher=slurm",
                "experiment=phaedra",
                "trainer=ddp",
                "hydra.launcher.tasks_per_node=4",
                "trainer.devices=4",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.tasks_per_node == cfg.trainer.devices == 4 and cfg.trainer.strategy == "ddp"
    assert launcher.submitit_folder.startswith(cfg.hydra.sweep.dir)


def test_ddp_that_would_relaunch_the_grid_is_refused_inside_a_multirun(tmp_path, data_dir):
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--multirun",
            "experiment=phaedra",
            "debug=fast",
            "trainer=ddp_cpu",
            "optimizer.lr=1e-4,3e-4",
            f"hydra.sweep.dir={tmp_path / 'grid'}",
            f"paths.data_dir={data_dir}",
            "logger=none",
            *SMALL_FIELDS,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert (
        "inside --multirun: Lightning would start the other ranks by running this command line again"
        in proc.stderr + proc.stdout
    )
    assert not (tmp_path / "grid" / "0" / "checkpoints").exists()  # refused before training
