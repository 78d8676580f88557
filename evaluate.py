"""Judge tokenizers: `python evaluate.py ckpt=<checkpoint>` (or `ckpts=[a,b,c]`) -> metrics with 95 % intervals, the
rate of the tokens, one table and one rate–distortion plot.

For each checkpoint (tokenizers.load_tokenizer): the data are its training run's (encode.py's training_data_config)
or `data=<config>` (of the checkpoint's kind: encode.py's build_data refuses another); normalized with the statistics
the tokenizer was trained with (`normalize=checkpoint`, the datamodule's use_statistics) or with the data's own
train split's (`normalize=data`: a user's file of other variables). Rows: the datamodule's `encode_set(split)`, or
the three splits (`split=all`). Each batch is reconstructed from its tokens, `decode(encode(x))`, and judged by the
data's metric (adapter.metric / adapter.update) with one metric group per bootstrap unit × metric group (fields:
unit (dataset, trajectory) × variable; EEG: recording × sampling rate; images: image; galaxies: object; and for
galaxies also the reconstruction from the continuous latents, as `latent/<metric>`). lit_modules/evaluation.py
turns the per-unit sums into point values and percentile-bootstrap intervals, and measures the rate.

Forecasters (field_transformer, field_fno checkpoints; hyper-parameters with an evaluator, no tokenizer): the model
and its data are rebuilt from the run's config_resolved.yaml (allowlisted), and every pair of its store's `split`
(val or test) is predicted and decoded; each metric of the forecast, of the present plus the predicted change, of the
tokenizer's floor (decode(encode(true future))) and of persistence gets an interval over the split's trajectories.
`rollout=k` feeds each prediction back k times and judges on pairs k·Δ apart. Persistence depends on the pairs
alone: forecasters on the same pairs share one persistence row.

Writes to out_dir (default: this run's outputs/evaluate/<time>/): metrics.json (one entry per checkpoint, sorted
keys), metrics.csv (one row per checkpoint × group), metrics.md (the table also printed), rate_distortion.png (an
error metric against bits per value: fields nrmse, EEG mse, images and galaxies psnr; forecast.png, rel L1 with its
interval per row, when only forecasters are judged). Two runs give identical files.
"""

from __future__ import annotations

import csv
import json
import logging
from functools import partial
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset

from datamodules.common import batch_is_ready, cache_key, unit_ids
from datamodules.token_store import file_sha256
from encode import DATA_TARGETS, NORMALIZE, apply_normalization, build_data, checked_tokenizer
from lit_modules.checkpoint_io import recorded_task, run_config
from lit_modules.common import MODULE_TARGETS
from lit_modules.evaluation import Bootstrap, TokenRate, summarize
from lit_modules.metrics import GroupedSums
from tokenizers.load import allowed_target, check_targets, read_checkpoint

log = logging.getLogger("scitok.evaluate")

SPLITS = ("train", "val", "test")
# A data kind's bootstrap unit: the encode_set index columns whose rows are not independent of each other.
UNITS = {
    "fields": ("dataset", "trajectory"),
    "eeg": ("recording",),
    "images": ("image",),
    "galaxy_images": ("object_id",),
}
# The error shown against bits per value in rate_distortion.png, per data kind.
ERROR = {"fields": "nrmse", "eeg": "mse", "images": "psnr", "galaxy_images": "psnr"}
RATE_COLUMNS = ("tokens_per_sample", "bits_per_value", "entropy_bits_per_value", "coded_bits_per_value")


def checkpoint_paths(cfg: DictConfig) -> list[Path]:
    """ckpt= or ckpts=[…] (exactly one of them), as paths in the order given."""
    one, many = cfg.get("ckpt"), cfg.get("ckpts")
    if (one is None) == (many is None):
        raise ValueError("give ckpt=<a tokenizer checkpoint> or ckpts=[a,b,c], one of the two")
    paths = [Path(str(p)) for p in ([one] if one is not None else many)]
    if not paths:
        raise ValueError("ckpts=[] names no checkpoint")
    return paths


def chosen_splits(cfg: DictConfig) -> list[str]:
    if cfg.split == "all":
        return list(SPLITS)
    if cfg.split not in SPLITS:
        raise ValueError(f"split={cfg.split}: choose one of {', '.join((*SPLITS, 'all'))}")
    return [str(cfg.split)]


def check_settings(cfg: DictConfig) -> None:
    chosen_splits(cfg)
    if cfg.normalize not in NORMALIZE:
        raise ValueError(
            f"normalize={cfg.normalize}: choose checkpoint (the tokenizer's training statistics) or data (the data's "
            f"own train split's)"
        )
    if cfg.max_samples is not None and int(cfg.max_samples) < 1:
        raise ValueError(f"max_samples={cfg.max_samples}: give a count ≥ 1, or null for every sample")


def load(ckpt: Path) -> torch.nn.Module:
    """The tokenizer of `ckpt` (encode.py's checked_tokenizer), refused by name when it is of a kind evaluate.py
    cannot judge."""
    tokenizer = checked_tokenizer(ckpt)
    meta = tokenizer.metadata
    if meta.kind not in UNITS:
        raise ValueError(
            f"ckpt={ckpt} holds a {type(tokenizer).__name__} of data kind {meta.kind!r}; evaluate.py judges "
            f"tokenizers of {sorted(UNITS)}"
        )
    return tokenizer


def label_of(ckpt: Path) -> str:
    """What a checkpoint is called in the table: its run's task name (the experiment), else the file name."""
    return recorded_task(run_config(ckpt)) or ckpt.stem


def data_name(spec: dict) -> str:
    source = spec.get("source") if isinstance(spec.get("source"), dict) else {}
    path = source.get("path")
    return f"{spec.get('_target_')}" + (f" ({path})" if path else "")


def normalize(cfg: DictConfig, datamodule, tokenizer, ckpt: Path) -> dict:
    """Apply cfg.normalize (encode.apply_normalization) and return what the output states about it: where the
    statistics came from and the data metadata in use."""
    apply_normalization(str(cfg.normalize), datamodule, tokenizer, ckpt)
    return {"from": str(cfg.normalize), **datamodule.metadata.to_dict()}


def rows(cfg: DictConfig, datamodule, spec: dict) -> tuple[list, np.ndarray, dict]:
    """The samples to judge: every chosen split's encode_set, in order (the first max_samples of them), their
    index, and each split's data fingerprint (cache_key of what encode_set says they depend on)."""
    sets, indices, fingerprints = [], [], {}
    for split in chosen_splits(cfg):
        dataset, index, about = datamodule.encode_set(split)
        if len(dataset) == 0:
            raise ValueError(
                f"split={split} of the data {data_name(spec)} has no samples: choose another split (split=all "
                "judges the three together) or give more data"
            )
        sets.append(dataset)
        indices.append(index)
        fingerprints[split] = cache_key(about)
    index = np.concatenate(indices)
    if cfg.max_samples is not None:
        index, left = index[: int(cfg.max_samples)], int(cfg.max_samples)
        for i, dataset in enumerate(sets):
            sets[i] = Subset(dataset, range(min(left, len(dataset))))
            left -= len(sets[i])
        sets = [s for s in sets if len(s)]
    return sets, index, fingerprints


def state_dict_of(metric: GroupedSums, units: int, groups: int) -> dict[str, torch.Tensor]:
    """A GroupedSums metric's states [units·groups, ...] as {name: [units, groups, ...]}."""
    names = (*metric.sums, *metric.counts, *metric.vectors)
    return {n: getattr(metric, n).detach().cpu().reshape(units, groups, *getattr(metric, n).shape[1:]) for n in names}


def evaluate_checkpoint(cfg: DictConfig, ckpt: Path, bootstrap: Bootstrap, device: torch.device) -> dict:
    """One checkpoint's entry of metrics.json."""
    tokenizer = load(ckpt)
    datamodule, spec = build_data(cfg, ckpt, tokenizer)
    normalization = normalize(cfg, datamodule, tokenizer, ckpt)
    adapter, kind = datamodule.adapter, tokenizer.metadata.kind
    group_names = adapter.groups(datamodule.metadata)
    n_groups = max(1, len(group_names))
    sets, index, fingerprints = rows(cfg, datamodule, spec)
    unit, n_units = unit_ids(index, UNITS[kind])
    judges = {"": adapter.metric(n_units * n_groups)}
    if hasattr(tokenizer, "reconstruct_from_latents"):  # galaxies: also from the continuous latents (no codebook)
        judges["latent/"] = adapter.metric(n_units * n_groups)
    for name, metric in judges.items():
        if not isinstance(metric, GroupedSums):
            raise ValueError(f"data.adapter.metric builds {type(metric).__name__}; evaluate.py needs a GroupedSums")
        judges[name] = metric.to(device)
    rate = TokenRate(tokenizer.streams)
    done, values_per_sample = judge(cfg, tokenizer.to(device), adapter, sets, unit, n_groups, judges, rate, device)
    metrics = summaries(judges, n_units, n_groups, group_names, bootstrap, bootstrap.unit_strata(index, unit, n_units))
    log.info("%s: %d samples of %d units judged", ckpt, done, n_units)
    return {
        "label": label_of(ckpt),
        "checkpoint": str(ckpt.resolve()),
        "sha256": file_sha256(ckpt),
        "tokenizer": type(tokenizer).__name__,
        "kind": kind,
        "split": str(cfg.split),
        "normalization": normalization,
        "data": {
            "config": spec,
            "fingerprint": fingerprints,
            "samples": done,
            "units": n_units,
            "unit": list(UNITS[kind]),
            "max_samples": cfg.max_samples,
        },
        "bootstrap": bootstrap.to_dict(),
        "error_metric": ERROR[kind],
        "metrics": metrics,
        "rate": rate.compute(values_per_sample),
    }


# the LightningModules whose checkpoints are forecasters, and the data configs their runs may name
FORECASTER_TARGETS = {
    "lit_modules.transformer_module": lambda obj: isinstance(obj, type),
    "lit_modules.operator_module": lambda obj: isinstance(obj, type),
}
# what each evaluator metric of a forecaster is called in the table: {model} the run's task (and the tokenizer
# whose tokens it reads), {h} the horizon in snapshots; the tokenizer's floor and persistence depend on the pairs (and
# the tokens) alone, not on the forecaster, and appear once however many forecasters share them
FORECAST_ROWS = {
    "forecast": "{model} Δ={h}",
    "increment": "{model} Δ={h}, present + predicted change",
    "tokenizer": "{tokenizer} tokens, floor Δ={h}",
    "persistence": "persistence Δ={h}",
}
SHARED_ROWS = ("tokenizer", "persistence")
# a forecast's errors also as the difference from persistence on the same pairs, with a paired interval
PAIRED = ("rel_l1", "nrmse")


def is_forecaster(ckpt: Path) -> bool:
    """A checkpoint of a forecaster (field_transformer over tokens, field_fno in pixels), not of a tokenizer."""
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt={ckpt} does not exist")
    hparams = read_checkpoint(ckpt, mmap=True).get("hyper_parameters") or {}
    return "tokenizer" not in hparams and "evaluator" in hparams


def load_forecaster(ckpt: Path, split: str, rollout: int = 1, samples: int | None = None, pick: str | None = None):
    """(module, datamodule) of a forecaster checkpoint, built as its run was from the run's config_resolved.yaml
    (module and data classes on the allowlists, read as data), the datamodule set up for `split`; with rollout k its
    pairs are k times the run's data.delta apart; samples: a token forecaster's forecast the mean of that many draws
    (lit_modules.forecast.FieldForecast; a pixel forecaster is left as it is), None: as the run judged; pick: a token
    forecaster's pick (FieldForecast: expected_code, argmax, soft), None: as the run judged."""
    resolved = run_config(ckpt)
    if not resolved.is_file():
        raise FileNotFoundError(f"ckpt={ckpt}: no {resolved} to rebuild its model and token data from")
    run = OmegaConf.to_container(OmegaConf.load(resolved), resolve=False)
    model, data = run.get("model") or {}, run.get("data") or {}
    cls = allowed_target(model.get("_target_"), f"{resolved} (model)", FORECASTER_TARGETS)
    check_targets(data, source=f"{resolved} (data)", allowed=DATA_TARGETS)
    checkpoint = read_checkpoint(ckpt)
    check_targets(checkpoint.get("hyper_parameters"), f"checkpoint {ckpt}", MODULE_TARGETS)
    if rollout > 1:
        data["delta"] = int(data.get("delta", 1)) * rollout
    datamodule = instantiate(data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("test" if split == "test" else "validate")
    hparams = dict(checkpoint["hyper_parameters"])
    evaluator = hparams.get("evaluator") or {}
    if evaluator.get("_target_") == "lit_modules.forecast.FieldForecast":  # a pixel forecaster has no draws or picks
        evaluator = hparams["evaluator"] = dict(evaluator)
        if samples is not None:
            if isinstance(samples, bool) or not str(samples).strip().isdigit():
                raise ValueError(f"samples={samples!r}: give the number of draws to average (an integer ≥ 0)")
            evaluator["samples"] = int(samples)
        if pick is not None:
            evaluator["pick"] = str(pick)
    module = cls(**hparams)
    module.build(datamodule)
    module.load_state_dict(checkpoint["state_dict"])
    if module.evaluator is None:
        raise ValueError(f"ckpt={ckpt} was trained with model.evaluator=null: it has no data-space forecast to judge")
    return module.eval(), datamodule


def evaluate_forecaster(cfg: DictConfig, ckpt: Path, bootstrap: Bootstrap, device: torch.device) -> list[dict]:
    """A forecaster's entries of metrics.json, on the pairs of its token store's split: its forecast (and, for the
    field transformer, the present plus its predicted change), the tokenizer's floor and persistence, each metric
    with a percentile-bootstrap interval over the split's trajectories."""
    if cfg.split not in ("val", "test"):
        raise ValueError(f"split={cfg.split}: a forecaster is judged on its store's val or test pairs")
    steps = int(cfg.rollout)
    if steps < 1:
        raise ValueError(f"rollout={cfg.rollout}: give the number of Δ steps, ≥ 1")
    module, datamodule = load_forecaster(ckpt, str(cfg.split), steps, cfg.get("samples"), cfg.get("pick"))
    module.to(device)
    evaluator, store = module.evaluator, datamodule.stores[str(cfg.split)]
    unit, n_units = unit_ids(store.index, UNITS["fields"])
    n_vars = len(evaluator.groups)
    metrics = torch.nn.ModuleDict(evaluator.metrics(groups=n_units * n_vars)).to(device)
    unit_of = torch.from_numpy(unit)
    loader = datamodule.test_dataloader() if cfg.split == "test" else datamodule.val_dataloader()
    done = 0
    with torch.inference_mode():
        for batch in loader:
            if cfg.max_samples is not None and done >= int(cfg.max_samples):
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            group = unit_of[batch["src"].cpu()] * n_vars + batch["variable"].cpu()
            evaluator.update(module.net, batch, metrics, str(cfg.split), group=group, steps=steps)
            done += len(batch["src"])
    tokens = store.meta.get("tokenizer", {}).get("checkpoint")
    tokenizer = label_of(Path(tokens)) if tokens else "the"
    model = label_of(ckpt) + (f" on {tokenizer} tokens" if hasattr(evaluator, "tokenizer") else "")
    # a rollout says in how many steps of the run's own Δ it reached the horizon
    rolled = f" ({steps} steps)" if steps > 1 else ""
    if getattr(evaluator, "samples", 0):  # the forecast is the mean of draws, not one pick
        rolled += f", mean of {evaluator.samples} draws"
    elif getattr(evaluator, "pick", None) == "soft":  # decoded expected codes, no ids
        rolled += ", decoded expected codes"
    common = {
        "checkpoint": str(ckpt.resolve()),
        "kind": "forecast",
        "split": str(cfg.split),
        "normalization": {"from": "store", **store.meta["normalization"]},
        "data": {
            "store": str(datamodule.store),
            "delta": datamodule.delta,
            "rollout": steps,
            "samples": done,
            "units": n_units,
        },
        "bootstrap": bootstrap.to_dict(),
        "error_metric": "rel_l1",
        "rate": None,
    }
    entries, sha = [], file_sha256(ckpt)
    strata = bootstrap.unit_strata(store.index, unit, n_units)
    states = {name: state_dict_of(metric, n_units, n_vars) for name, metric in metrics.items()}
    for name, metric in metrics.items():
        judge = partial(summarize, type(metric).values, seen=metric.seen, group_names=list(evaluator.groups))
        judged = judge(states[name], bootstrap=bootstrap, strata=strata)
        if name not in SHARED_ROWS:  # the forecast minus persistence on the same pairs, from the same resamples
            versus = judge(states[name], bootstrap=bootstrap, strata=strata, baseline=states["persistence"])
            for part, values in [(judged["overall"], versus["overall"])] + [
                (judged["groups"][g], versus["groups"][g]) for g in judged["groups"]
            ]:
                part.update({f"{m} − persistence": values[m] for m in PAIRED})
        row = FORECAST_ROWS[name].format(model=model, tokenizer=tokenizer, h=datamodule.delta)
        row += rolled if name not in SHARED_ROWS else ""
        own = {"checkpoint": None} if name in SHARED_ROWS else {"sha256": sha}  # evaluate() keeps one of each
        entries.append({**common, **own, "label": row, "metrics": judged})
    log.info("%s: %d pairs of %d trajectories judged", ckpt, done, n_units)
    return entries


def judge(cfg, tokenizer, adapter, sets, unit: np.ndarray, n_groups: int, judges: dict, rate: TokenRate, device):
    """Every sample of `sets` (in order; unit [N] its unit id) through encode and decode, into the metrics (group
    id = unit · n_groups + metric group) and the rate; returns (samples, values per sample)."""
    done, values_per_sample = 0, 0
    with torch.inference_mode():
        for dataset in sets:
            loader = DataLoader(
                dataset, batch_size=int(cfg.batch_size), collate_fn=batch_is_ready, num_workers=int(cfg.num_workers)
            )
            for batch in loader:
                batch = {k: v.to(device) for k, v in batch.items()}
                model_input = adapter.unpack(batch)
                tokens = tokenizer.encode(model_input.x, **model_input.cond)
                n = len(model_input.x)
                group = adapter.group_of(batch)
                group = torch.zeros(n, dtype=torch.long, device=device) if group is None else group.long()
                group = torch.from_numpy(unit[done : done + n]).to(device) * n_groups + group
                adapter.update(judges[""], tokenizer.decode(tokens, **model_input.cond), batch, group)
                if "latent/" in judges:
                    adapter.update(judges["latent/"], tokenizer.reconstruct_from_latents(model_input.x), batch, group)
                rate.update(tokens)
                values_per_sample = model_input.x[0].numel()
                done += n
    return done, values_per_sample


def summaries(
    judges: dict, n_units: int, n_groups: int, group_names: list[str], bootstrap: Bootstrap, strata=None
) -> dict:
    """{"units", "overall": {metric: {value, interval}}, "groups": {name: {"units", metric: …}}} of every metric in
    `judges` ({prefix: metric}), each metric's name prefixed. strata: [n_units] each unit's stratum, or None."""
    metrics: dict = {"overall": {}, "groups": {}}
    for prefix, metric in judges.items():
        states = state_dict_of(metric, n_units, n_groups)
        judged = summarize(type(metric).values, states, metric.seen, group_names, bootstrap, strata)
        metrics["units"] = judged["units"]
        metrics["overall"].update({prefix + k: v for k, v in judged["overall"].items()})
        for g, part in judged["groups"].items():
            entry = metrics["groups"].setdefault(g, {"units": part["units"]})
            entry.update({prefix + k: v for k, v in part.items() if k != "units"})
    return metrics


def unique_labels(entries: list[dict]) -> None:
    """Two checkpoints of one experiment: label them <name>, <name>-2, … in the order given."""
    seen: dict[str, int] = {}
    for entry in entries:
        seen[entry["label"]] = seen.get(entry["label"], 0) + 1
        if seen[entry["label"]] > 1:
            entry["label"] = f"{entry['label']}-{seen[entry['label']]}"


def table_rows(entries: list[dict]) -> tuple[list[str], list[dict]]:
    """One flat row per checkpoint × group ("all" first): identity, units, every metric with _lo/_hi, the rate
    columns. Columns in first-seen order."""
    columns = ["label", "group", "kind", "split", "normalize", "units", "samples"]
    metric_columns: list[str] = []
    out = []
    for e in entries:
        parts = [("all", {"units": e["metrics"]["units"], **e["metrics"]["overall"]})]
        parts += sorted(e["metrics"]["groups"].items())
        for group, values in parts:
            row = {
                "label": e["label"],
                "group": group,
                "kind": e["kind"],
                "split": e["split"],
                "normalize": e["normalization"]["from"],
                "units": values["units"],
                "samples": e["data"]["samples"] if group == "all" else "",
            }
            for name, judged in values.items():
                if name == "units":
                    continue
                if name not in metric_columns:
                    metric_columns.append(name)
                row[name], (row[f"{name}_lo"], row[f"{name}_hi"]) = judged["value"], judged["interval"]
            row.update({k: (e["rate"] or {}).get(k) for k in RATE_COLUMNS})
            out.append(row)
    columns += [c for m in metric_columns for c in (m, f"{m}_lo", f"{m}_hi")] + list(RATE_COLUMNS)
    return columns, out


def fmt(x) -> str:
    return "–" if x is None or x == "" else (f"{x:.4g}" if isinstance(x, float) else str(x))


def markdown(entries: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows: each metric as `value [lo, hi]`."""
    columns, flat = table_rows(entries)
    metrics = [c for c in columns if f"{c}_lo" in columns]
    header = ["checkpoint", "group", "units", *metrics, *RATE_COLUMNS]
    body = [
        [
            r["label"],
            r["group"],
            fmt(r["units"]),
            *[f"{fmt(r.get(m))} [{fmt(r.get(m + '_lo'))}, {fmt(r.get(m + '_hi'))}]" for m in metrics],
            *[fmt(r[k]) for k in RATE_COLUMNS],
        ]
        for r in flat
    ]
    return header, body


def markdown_text(entries: list[dict]) -> str:
    header, body = markdown(entries)
    e = entries[0]
    lines = [
        f"split={e['split']}, normalize={e['normalization']['from']}; each metric: value [95 % bootstrap interval]",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def plot(entries: list[dict], path: Path) -> None:
    """rate_distortion.png: each kind's error metric against bits_per_value, one labelled point per checkpoint,
    error bars its 95 % interval (one panel per error metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rated = [e for e in entries if e["rate"] is not None]
    errors = sorted({e["error_metric"] for e in rated})
    forecasts = [e for e in entries if e["rate"] is None]
    panels = len(errors) + bool(forecasts)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    if forecasts:  # forecasters have no rate: their error with its interval, one row each
        ax = axes[0][-1]
        error = forecasts[0]["error_metric"]
        for i, e in enumerate(forecasts):
            judged = e["metrics"]["overall"][error]
            y = judged["value"]
            lo, hi = (v if v is not None else y for v in judged["interval"])
            ax.errorbar([y], [i], xerr=[[y - lo], [hi - y]], fmt="o", capsize=4)
        ax.set_yticks(range(len(forecasts)), [e["label"] for e in forecasts])
        ax.invert_yaxis()
        ax.set_xlabel(f"{error} (split={forecasts[0]['split']}), 95 % bootstrap intervals")
        ax.grid(alpha=0.3)
    for ax, error in zip(axes[0], errors, strict=False):
        for e in (e for e in rated if e["error_metric"] == error):
            judged = e["metrics"]["overall"][error]
            x, y = e["rate"]["bits_per_value"], judged["value"]
            lo, hi = (v if v is not None else y for v in judged["interval"])
            ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o", capsize=4)
            ax.annotate(e["label"], (x, y), textcoords="offset points", xytext=(6, 6))
        ax.set_xlabel("bits per value (codebook)")
        ax.set_ylabel(f"{error} (split={entries[0]['split']})")
        ax.set_title(f"{error} against rate, 95 % bootstrap intervals")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)


def write_outputs(entries: list[dict], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = "rate_distortion.png" if any(e["rate"] is not None for e in entries) else "forecast.png"
    paths = {n: out_dir / n for n in ("metrics.json", "metrics.csv", "metrics.md", figure)}
    paths["metrics.json"].write_text(json.dumps({"checkpoints": entries}, indent=2, sort_keys=True) + "\n")
    columns, flat = table_rows(entries)
    with open(paths["metrics.csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in flat)
    paths["metrics.md"].write_text(markdown_text(entries))
    plot(entries, paths[figure])
    return paths


def print_table(text: str) -> None:
    """The markdown table, as written to metrics.md (plain text: it is wider than most terminals)."""
    from rich.console import Console

    Console(soft_wrap=True).print(text, markup=False, highlight=False)


def log_to_loggers(cfg: DictConfig, entries: list[dict], paths: dict[str, Path]) -> None:
    """logger=wandb: the table and the plot to one run; a logger failure only warns."""
    if not cfg.get("logger"):
        return
    from lightning.pytorch.loggers import WandbLogger

    from lit_modules.loggers import start_loggers

    try:
        for logger in start_loggers(cfg.logger, cfg):
            if isinstance(logger, WandbLogger):
                header, body = markdown(entries)
                logger.log_table(key="evaluate/metrics", columns=header, data=body)
                figure = next(p for n, p in paths.items() if n.endswith(".png"))
                logger.log_image(key=f"evaluate/{figure.stem}", images=[str(figure)])
    except Exception as e:  # the files are written: a logger's failure loses nothing
        log.warning("logging the evaluation failed: %r", e)
    finally:
        import wandb

        wandb.finish()


def evaluate(cfg: DictConfig) -> dict:
    """Judge every checkpoint of cfg (ckpt= or ckpts=) and write the outputs to cfg.out_dir; returns the content of
    metrics.json."""
    check_settings(cfg)
    ckpts = checkpoint_paths(cfg)
    strata = cfg.bootstrap.get("strata")
    bootstrap = Bootstrap(
        int(cfg.bootstrap.resamples), float(cfg.bootstrap.level), int(cfg.bootstrap.seed), strata=strata or None
    )
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    entries = []
    for ckpt in ckpts:
        if is_forecaster(ckpt):
            for e in evaluate_forecaster(cfg, ckpt, bootstrap, device):
                same = (o for o in entries if o["checkpoint"] is None and o["label"] == e["label"])
                if e["checkpoint"] is not None or not any(o["metrics"] == e["metrics"] for o in same):
                    entries.append(e)
        else:
            entries.append(evaluate_checkpoint(cfg, ckpt, bootstrap, device))
    unique_labels(entries)
    paths = write_outputs(entries, Path(cfg.out_dir))
    print_table(markdown_text(entries))
    log_to_loggers(cfg, entries, paths)
    for name, path in paths.items():
        log.info("%s: %s", name, path)
    return {"checkpoints": entries}


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)
    print(f"wrote {Path(cfg.out_dir).resolve()}/metrics.json")


if __name__ == "__main__":
    main()
