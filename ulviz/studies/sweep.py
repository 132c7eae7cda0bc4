"""Sweeps: many runs from one TOML file, one at a time, N at a time, or as tasks on a Ray cluster.

A sweep file has ``out`` (the output directory, relative to the file), ``[base]`` (a run config,
the structure of ``ulviz train --config`` JSON; ``train.recipe = "paper"`` takes that recipe's
fields first, as ``ulviz train --recipe`` does) and ``[axes]`` (dotted config field -> values);
the runs are the product of the axes, in the file's order. Each run is named from its axes
values (``method-em_seed-1``: the field's last part, then the value, sanitized; stable, since it
depends only on the file) and writes ``<out>/<name>.h5``. The expanded plan is written to
``<out>/sweep-plan.json`` beside the runs.

Re-running a sweep is idempotent: a complete run file is skipped, an interrupted one (a killed
worker, a stopped machine) is resumed from its last finished epoch (``ulviz train --resume``),
and a failed or diverged one is retried only with ``retry_failed``. A run file whose config
differs from the plan is refused rather than overwritten: the sweep file changed under it.

Executors: ``local`` runs each run as its own process (``python -m ulviz.cli train``), up to
``parallel`` at a time; ``ray`` submits each run as a Ray task (``num_gpus=1`` when the run asks
for cuda, ``num_cpus`` otherwise) that trains in the worker and writes into the output
directory, which on a cluster must be storage every node sees (NFS, a mounted bucket).
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.config import RunConfig
from ..core.errors import UlvizError
from .processes import safe_name, worker_env

PLAN = "sweep-plan.json"
STATES = ("pending", "running", "interrupted", "complete", "failed")


@dataclass(frozen=True)
class PlannedRun:
    name: str  # derived from the axes values, file-safe
    path: Path  # <out>/<name>.h5
    config: RunConfig  # base with the axes values set, named `name`
    values: dict  # dotted field -> value of this run


@dataclass(frozen=True)
class Sweep:
    file: Path  # the sweep file
    out: Path  # output directory, absolute
    base: dict  # the base run config as a dict
    axes: dict  # dotted field -> list of values, in the file's order
    runs: list  # PlannedRun, the product of the axes


def load_sweep(path: str | Path) -> Sweep:
    """Read and expand a sweep file; any mistake (TOML syntax, an unknown field, an empty axis)
    is a UlvizError naming it, before anything runs."""
    path = Path(path).expanduser().resolve()
    try:
        text = path.read_text()
    except OSError as e:
        raise UlvizError(f"{path}: cannot read the sweep file ({e.strerror or e})") from None
    return parse_sweep(text, path)


def parse_sweep(text: str, path: str | Path) -> Sweep:
    """A sweep from TOML text; relative paths (out, data.data_dir) are taken from `path`'s folder."""
    path = Path(path).resolve()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UlvizError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(doc) - {"out", "base", "axes"})
    if unknown:
        raise UlvizError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; a sweep has out, [base] and [axes]")
    if not isinstance(doc.get("out"), str) or not doc["out"].strip():
        raise UlvizError(f"{path}: needs out = \"DIRECTORY\" (where the run files go, relative to the sweep file)")
    base, axes = doc.get("base", {}), doc.get("axes", {})
    if not isinstance(base, dict) or not isinstance(axes, dict):
        raise UlvizError(f"{path}: [base] and [axes] must be tables")
    for field, values in axes.items():
        if not isinstance(values, list) or not values:
            raise UlvizError(f"{path}: axis {field!r} needs a non-empty list of values")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise UlvizError(f"{path}: axis {field!r} repeats a value")
    base = _resolve_data_dir(base, path.parent)
    out = (path.parent / doc["out"]).resolve()
    try:
        runs = expand(base, axes, out)
    except UlvizError as e:
        raise UlvizError(f"{path}: {e}") from None
    return Sweep(path, out, base, dict(axes), runs)


def _resolve_data_dir(base: dict, folder: Path) -> dict:
    data = base.get("data")
    if isinstance(data, dict) and isinstance(data.get("data_dir"), str):
        d = Path(data["data_dir"]).expanduser()
        if not d.is_absolute():
            return {**base, "data": {**data, "data_dir": str((folder / d).resolve())}}
    return base


def expand(base: dict, axes: dict, out: Path) -> list[PlannedRun]:
    """Every combination of the axes values set on `base`, named from the values; each run's
    registry names and method and defense parameters checked (training.check_config).

    A method parameter that some method of the grid takes is left out of the runs of the methods
    that do not take it, and out of their names: crossing ``poison.method = ["clean", "em"]`` with
    ``poison.params.eps`` plans one clean run per seed (the clean twin of every em run) instead of
    refusing the grid. Runs that become the same that way are planned once. A parameter no method
    of the grid takes is still refused, so a typo is not dropped silently."""
    from ..training.loop import check_config

    fields = list(axes)
    keys = _name_keys(fields)
    combos = [dict(zip(fields, combo)) for combo in itertools.product(*(axes[f] for f in fields))]
    docs = [_with_values(base, values) for values in combos]
    taken = _params_taken({_method(d) for d in docs})
    runs, planned = [], {}
    for values, d in zip(combos, docs):
        values = _without_untaken(d, values, taken)
        name = safe_name(_values_name(keys, values), 120)
        d["name"] = name
        try:
            config = _with_recipe(RunConfig.from_dict(d), d.get("train", {}))
            check_config(config)
        except (UlvizError, TypeError) as e:
            raise UlvizError(f"run {name}: {e}") from None
        if name in planned:
            if planned[name] == (values, config):  # a method that ignores an axis: the same run again
                continue
            raise UlvizError(f"runs {planned[name][0]} and {values} get the same name {name!r}; make the axes values distinct")
        planned[name] = values, config
        runs.append(PlannedRun(name, out / f"{name}.h5", config, values))
    return runs


def _with_values(base: dict, values: dict) -> dict:
    d = json.loads(json.dumps(base))  # a deep copy
    for field, value in values.items():
        _set_dotted(d, field, value)
    return d


def _method(d: dict) -> str | None:
    """The run's method name, None where it is not a string (check_config refuses it)."""
    poison = d.get("poison")
    method = poison.get("method", "clean") if isinstance(poison, dict) else "clean"
    return method if isinstance(method, str) else None


def _params_taken(methods: set) -> set:
    """The parameters at least one of `methods` takes (unknown names are check_config's to refuse)."""
    from ..protect.poisons import list_methods, method_info
    return {k for m in methods if m in list_methods() for k in method_info(m).defaults}


def _without_untaken(d: dict, values: dict, taken: set) -> dict:
    """Drop from `d` the method parameters its method does not take but another method of the
    grid does; returns `values` without the axes of the dropped ones (for the run's name)."""
    from ..protect.poisons import list_methods, method_info
    poison, method = d.get("poison"), _method(d)
    if not isinstance(poison, dict) or not isinstance(poison.get("params"), dict) or method not in list_methods():
        return values
    takes = set(method_info(method).defaults)
    dropped = {k for k in poison["params"] if k not in takes and k in taken}
    if not dropped:
        return values
    poison["params"] = {k: v for k, v in poison["params"].items() if k not in dropped}
    return {f: v for f, v in values.items() if not (f.startswith("poison.params.") and f[len("poison.params."):] in dropped)}


def _with_recipe(config: RunConfig, train: dict) -> RunConfig:
    """With ``train.recipe`` named, the recipe's fields (as ``ulviz train --recipe``), then the
    fields the file gives explicitly; without it, the file's fields over TrainConfig's defaults."""
    from dataclasses import replace

    from ..data.recipes import apply_recipe
    if "recipe" not in train:
        return config
    given = {k: v for k, v in train.items() if k not in ("recipe",)}
    fixed = apply_recipe(config.train, train["recipe"], config.data.name)
    return replace(config, train=replace(fixed, **given))


def _name_keys(fields: list[str]) -> dict[str, str]:
    """The short name of each axis in run names: its last part, or the whole field when two share it."""
    last = [f.split(".")[-1] for f in fields]
    return {f: (l if last.count(l) == 1 else f) for f, l in zip(fields, last)}


def _values_name(keys: dict[str, str], values: dict) -> str:
    """``method-em_seed-1``: each axis's short name and value, in the file's order."""
    return "_".join(f"{keys[f]}-{_value_text(v)}" for f, v in values.items()) or "run"


def _value_text(v: Any) -> str:
    return str(v) if isinstance(v, (str, int, float, bool)) else json.dumps(v, sort_keys=True)


def _set_dotted(d: dict, field: str, value: Any) -> None:
    parts = field.split(".")
    top = {"name", "data", "model", "poison", "train", "sal"}
    if parts[0] not in top:
        raise UlvizError(f"axis {field!r}: a field of the run config starts with one of {', '.join(sorted(top))}")
    node = d
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UlvizError(f"axis {field!r}: {p!r} is not a table")
    node[parts[-1]] = value


# -- state --------------------------------------------------------------------------------------

def run_state(run: PlannedRun) -> tuple[str, int]:
    """(state, epochs done) of a planned run from its file: pending (no file), running (its writer
    lives), interrupted (resumable), complete, or failed (failed, diverged, or a damaged file)."""
    from ..store.runs import open_run
    if not run.path.exists():
        return "pending", 0
    try:
        r = open_run(run.path)
    except UlvizError:
        return "failed", 0
    if r.config != run.config:
        raise UlvizError(f"{run.path} holds a run with another config than the sweep plans (the sweep file changed?); "
                         "move it away or use another out directory")
    state = {"complete": "complete", "running": "running", "interrupted": "interrupted",
             "cancelled": "interrupted"}.get(r.status, "failed")
    return state, int(r.epochs_done)


def sweep_status(sweep: Sweep) -> list[dict]:
    """One row per planned run: name, state, epochs done, epochs planned, file."""
    rows = []
    for run in sweep.runs:
        state, done = run_state(run)
        rows.append({"run": run.name, "state": state, "epoch": done, "epochs": run.config.train.epochs,
                     "file": str(run.path)})
    return rows


def sweep_progress(file: str | Path) -> list[dict]:
    """The status rows of the sweep in `file` (the dashboard's jobs list follows a sweep by it)."""
    return sweep_status(load_sweep(file))


def status_line(rows: list[dict]) -> str:
    """``12 runs: 5 complete, 2 running (a 3/30, b 7/30), 1 failed, 4 to do``."""
    count = {s: sum(r["state"] == s for r in rows) for s in STATES}
    running = ", ".join(f"{r['run']} {r['epoch']}/{r['epochs']}" for r in rows if r["state"] == "running")
    parts = [f"{count['complete']} complete", f"{count['running']} running" + (f" ({running})" if running else ""),
             f"{count['failed']} failed", f"{count['pending'] + count['interrupted']} to do"
             + (f" ({count['interrupted']} to resume)" if count["interrupted"] else "")]
    return f"{len(rows)} runs: " + ", ".join(parts)


def write_plan(sweep: Sweep) -> Path:
    """The expanded plan as JSON beside the runs (atomic)."""
    sweep.out.mkdir(parents=True, exist_ok=True)
    plan = {"sweep": str(sweep.file), "axes": sweep.axes,
            "runs": [{"name": r.name, "file": r.path.name, "values": r.values, "config": r.config.to_dict()}
                     for r in sweep.runs]}
    tmp = sweep.out / f".{PLAN}.tmp"
    tmp.write_text(json.dumps(plan, indent=1))
    os.replace(tmp, sweep.out / PLAN)
    return sweep.out / PLAN


def todo(sweep: Sweep, retry_failed: bool = False) -> list[tuple[PlannedRun, bool]]:
    """(run, resume?) for every run to execute now: pending ones fresh, interrupted ones resumed,
    failed ones fresh again only with `retry_failed`; complete and running ones are left."""
    out = []
    for run in sweep.runs:
        state, done = run_state(run)
        if state == "pending" or (state == "failed" and retry_failed):
            out.append((run, False))
        elif state == "interrupted":
            out.append((run, done > 0))
    return out


# -- executors ----------------------------------------------------------------------------------

def run_sweep(sweep: Sweep, executor: str = "local", parallel: int = 1, retry_failed: bool = False,
              address: str | None = None, say: Callable[[str], None] = print, poll_s: float = 1.0) -> list[dict]:
    """Execute what the sweep still needs with `executor` ("local" or "ray"), reporting progress
    through `say`; returns the final status rows."""
    write_plan(sweep)
    work = todo(sweep, retry_failed)
    skipped_failed = [r["run"] for r in sweep_status(sweep) if r["state"] == "failed"] if not retry_failed else []
    if skipped_failed:
        say(f"not retried (failed before; use --retry-failed): {', '.join(skipped_failed)}")
    if executor == "local":
        _run_local(sweep, work, max(1, int(parallel)), say, poll_s)
    elif executor == "ray":
        _run_ray(sweep, work, address, say, poll_s)
    else:
        raise UlvizError(f"unknown executor {executor!r}; use local or ray")
    rows = sweep_status(sweep)
    say(status_line(rows))
    return rows


def _train_command(run: PlannedRun, resume: bool) -> list[str]:
    if resume:
        return [sys.executable, "-m", "ulviz.cli", "train", "--resume", str(run.path), "--quiet"]
    config_file = run.path.with_name(f".{run.name}.config.json")
    config_file.write_text(run.config.to_json())
    return [sys.executable, "-m", "ulviz.cli", "train", "--config", str(config_file), "--out", str(run.path),
            "--overwrite", "--quiet"]


def _run_local(sweep: Sweep, work: list, parallel: int, say, poll_s: float) -> None:
    env = worker_env()
    queue, running, last = list(work), {}, ""
    while queue or running:
        while queue and len(running) < parallel:
            run, resume = queue.pop(0)
            log = open(sweep.out / f".{run.name}.log", "ab")
            proc = subprocess.Popen(_train_command(run, resume), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=sweep.file.parent, env=env)
            running[run.name] = (proc, log, run)
            say(f"{'resume' if resume else 'start'} {run.name}")
        for name, (proc, log, run) in list(running.items()):
            code = proc.poll()
            if code is not None:
                log.close()
                del running[name]
                if code != 0:
                    say(f"{name} ended with exit code {code}; log: {sweep.out / f'.{name}.log'}")
        line = status_line(sweep_status(sweep))
        if line != last:
            say(line)
            last = line
        if running:
            time.sleep(poll_s)


def _run_ray(sweep: Sweep, work: list, address: str | None, say, poll_s: float) -> None:
    try:
        import ray
    except ImportError:
        raise UlvizError("the ray executor needs Ray: pip install -e '.[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    try:
        task = ray.remote(_ray_train)
        pending = {}
        for run, resume in work:
            cuda = run.config.train.device == "cuda"
            opts = {"num_gpus": 1, "num_cpus": 1} if cuda else {"num_cpus": 1}
            ref = task.options(**opts, name=f"ulviz:{run.name}").remote(run.config.to_json(), str(run.path), resume)
            pending[ref] = run
            say(f"{'resume' if resume else 'submit'} {run.name}")
        last = ""
        while pending:
            ready, _ = ray.wait(list(pending), timeout=poll_s)
            for ref in ready:
                run = pending.pop(ref)
                try:
                    ray.get(ref)
                except Exception as e:  # a task's error arrives wrapped; the message is what matters
                    say(f"{run.name} failed: {str(e).strip().splitlines()[-1]}")
            line = status_line(sweep_status(sweep))
            if line != last:
                say(line)
                last = line
    finally:
        if started_here:
            ray.shutdown()


def _ray_train(config_json: str, path: str, resume: bool) -> str:
    """One run inside a Ray worker: train (or resume) into `path`; returns the final status."""
    from ..training.loop import resume as resume_run
    from ..training.loop import train
    if resume:
        return resume_run(path).status
    return train(RunConfig.from_json(config_json), path, overwrite=True).status


# -- results ------------------------------------------------------------------------------------

def sweep_ud(sweep: Sweep, seed_field: str = "train.seed"):
    """(per-run table, summary table) of a sweep's complete runs. Each run's UD is taken against
    its clean twin, the clean run that differs from it only in its protection (same data, model,
    seed, defenses, ...); the summary has the mean and spread (sample std) over seeds of
    accuracy and UD for each variant (the run's axes values without the seed)."""
    from ..measure.seeds import seed_summary, seed_table

    done = [run for run in sweep.runs if run_state(run)[0] == "complete"]
    keys = _name_keys(list(sweep.axes))  # as in the run names: method-em_seed-1 -> variant method-em
    variants = {run.path: _values_name(keys, {k: v for k, v in run.values.items() if k != seed_field})
                for run in done}
    table = seed_table([run.path for run in done], variants)
    return table, seed_summary(table)
