"""Runs launched from the dashboard: background processes that write run files.

A job is one ``python -m ulviz.cli train --config ... --out ...`` process, started detached (its
own session) so it outlives page reloads and the Streamlit script that launched it. Its record
lives in ``<data dir>/.jobs/<id>.json`` (config, output path, pid, log file), so any page and any
later session can list it, follow it (by reading its run file, never by talking to the process)
and cancel it (SIGTERM, which the CLI turns into status "cancelled"). At most `max_running` jobs
run at a time (one by default); the others wait as "queued" and are started by :meth:`poll`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.config import RunConfig
from ..core.errors import UlvizError
from ..studies.processes import safe_name, worker_env


def inside(directory: str | Path, path: str | Path) -> Path:
    """`path` resolved, refused unless it lies inside `directory` (no '..' or symlink escapes)."""
    root = Path(directory).resolve()
    target = (root / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    if target != root and root not in target.parents:
        raise UlvizError(f"{path}: outside the data directory {root}; refused")
    return target


UPLOAD_LIMIT = 200 << 20  # bytes: a run file larger than this is not taken in


def add_run_file(data_dir: str | Path, name: str, data: bytes) -> Path:
    """Put a run file's bytes (uploaded, or copied from a path) into ``<data dir>/uploads`` under a
    file-safe version of `name`. It is read back as a run first, under a temporary name, so a file
    that is not a readable run never joins the runs; returns where it landed."""
    from ..store.runs import open_run

    if len(data) > UPLOAD_LIMIT:
        raise UlvizError(f"{name}: {len(data) >> 20} MB, over the {UPLOAD_LIMIT >> 20} MB limit")
    folder = inside(data_dir, "uploads")
    folder.mkdir(parents=True, exist_ok=True)
    target = inside(folder, safe_name(Path(name).stem) + ".h5")
    tmp = target.with_suffix(".h5.part")
    tmp.write_bytes(data)
    try:
        open_run(tmp)
    except UlvizError as e:
        tmp.unlink()
        raise UlvizError(str(e).replace(str(tmp), name)) from None
    tmp.replace(target)
    return target


def read_run_source(path: str | Path) -> tuple[str, bytes]:
    """(file name, bytes) of a run file named by the user, for :func:`add_run_file`; a clear
    error for a path that is missing, a directory (naming the .h5 files directly in it) or too big."""
    source = Path(path).expanduser()
    if source.is_dir():
        found = sorted(p.name for p in source.glob("*.h5") if p.is_file())
        holds = f"it holds {', '.join(found[:10])}{' ...' if len(found) > 10 else ''}" if found else \
            "it holds no .h5 file"
        raise UlvizError(f"{path} is a directory, not a run file; {holds}")
    if not source.is_file():
        raise UlvizError(f"{path}: no such file")
    if source.stat().st_size > UPLOAD_LIMIT:  # checked before reading it all into memory
        raise UlvizError(f"{path}: over the {UPLOAD_LIMIT >> 20} MB limit")
    return source.name, source.read_bytes()


BUILT_IN_DATASETS = ("digits", "synthetic")  # the datasets that need no local files


def launch_config(name: str, dataset: str, model: str, method: str, *, params_text: str = "", ratio: float = 1.0,
                  epochs: int = 10, seed: int = 0, sal: str = "fast", recipe: str | None = None,
                  lr: float | None = None, batch_size: int | None = None, augment: str | None = None,
                  dataset_dir: str = "", train_limit: int | None = None) -> RunConfig:
    """The RunConfig of the dashboard's launch form, checked before any job starts: the name made
    file-safe, the whole config as training checks it (training.check_config: the method's
    parameters, "key=value, ...", known to it and of their types), the recipe (None = the
    dataset's default) resolved with the explicit overrides (None = the recipe's value), and the
    dataset's files, for a local-file dataset, found and made absolute (a job runs in the data
    directory, where a relative path would point elsewhere)."""
    from ..core.config import DataConfig, ModelConfig, PoisonConfig, SALConfig, TrainConfig, parse_param
    from ..data.recipes import apply_recipe, default_recipe
    from ..training.loop import check_config

    params = dict(parse_param(item) for item in params_text.split(",") if item.strip())
    files = None
    if dataset not in BUILT_IN_DATASETS:
        if not dataset_dir.strip():
            raise UlvizError(f"dataset {dataset!r} is read from local files: give their directory (or .npz file)")
        files = Path(dataset_dir.strip()).expanduser().resolve()
        if not files.exists():
            raise UlvizError(f"{dataset_dir}: no such directory or file (dataset {dataset!r})")
    train = apply_recipe(TrainConfig(epochs=int(epochs), seed=int(seed), device="auto"),
                         recipe or default_recipe(dataset), dataset, lr=lr, batch_size=batch_size, augment=augment)
    config = RunConfig(name=safe_name(name), data=DataConfig(dataset, None if files is None else str(files),
                                                             train_limit=train_limit or None),
                       model=ModelConfig(model), poison=PoisonConfig(method, float(ratio), int(seed), params),
                       train=train, sal=SALConfig(estimator=sal))
    check_config(config)  # what the job would refuse at its start, refused here instead
    return config


@dataclass
class Job:
    id: str  # unique, also the record's file name
    name: str  # the run's name
    out: str  # the run file it writes
    log: str  # stdout and stderr of the process
    config: dict  # the RunConfig as a dict
    state: str = "queued"  # queued | started | cancelled (what we did; the run file tells the rest)
    pid: int = 0  # the process, once started
    created: float = 0.0  # time.time() at launch
    kind: str = "run"  # "run": one training run writing `out`; "sweep": `ulviz sweep` writing the runs under `out`

    def alive(self) -> bool:
        if self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # a finished child we started is a zombie until reaped: reap it so it reads as gone
        try:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
            return done == 0
        except ChildProcessError:
            return True  # not our child: it exists

    def active(self) -> bool:
        """Queued, or its process still running (a cancelled one may take a moment to end)."""
        return self.state == "queued" or self.alive()

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = Path(self.log).read_text(errors="replace")
        except OSError:
            return ""
        # progress bars rewrite one line with carriage returns: keep what was last drawn
        return "\n".join(line.split("\r")[-1] for line in text.splitlines()[-lines:])


class JobManager:
    """Jobs of one data directory; runs are written to ``<data dir>/runs``."""

    def __init__(self, data_dir: str | Path, max_running: int = 1):
        self.data_dir = Path(data_dir).resolve()
        self.dir = self.data_dir / ".jobs"
        self.runs_dir = self.data_dir / "runs"
        self.max_running = max_running

    def launch(self, config: RunConfig) -> Job:
        """Queue a run of `config` (named by config.name, made file-safe); starts it if a slot is free."""
        name = safe_name(config.name)
        out = inside(self.data_dir, self.runs_dir / f"{name}.h5")
        if out.exists() or any(j.out == str(out) and j.state != "cancelled" for j in self.jobs()):
            raise UlvizError(f"a run named {name!r} already exists in {self.runs_dir}; choose another name")
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        return self._queue(name, out, config.to_dict())

    def launch_sweep(self, text: str, name: str, parallel: int = 1) -> Job:
        """Queue a sweep from the text of a sweep file (local executor, `parallel` runs at a time).
        The file is kept as ``<data dir>/sweeps/<name>.toml``; its ``out`` must lie inside the data
        directory, so the dashboard sees the runs. A sweep already in progress over the same
        output directory is refused; a finished one may be launched again (it resumes)."""
        from ..studies.sweep import parse_sweep

        name = safe_name(name)
        file = inside(self.data_dir, self.data_dir / "sweeps" / f"{name}.toml")
        sweep = parse_sweep(text, file)  # every mistake is reported before anything is written
        inside(self.data_dir, sweep.out)
        if any(j.kind == "sweep" and Path(j.out) == sweep.out and j.active() for j in self.jobs()):
            raise UlvizError(f"a sweep into {sweep.out} is already queued or running")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
        return self._queue(name, sweep.out, {"sweep": str(file), "runs": len(sweep.runs), "parallel": int(parallel)},
                           kind="sweep")

    def _queue(self, name: str, out: Path, config: dict, kind: str = "run") -> Job:
        """Record a new job and start it if a slot is free."""
        self.dir.mkdir(parents=True, exist_ok=True)
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        job = Job(job_id, name, str(out), str(self.dir / f"{job_id}.log"), config, created=time.time(), kind=kind)
        self._save(job)
        self.poll()
        return self.get(job_id)

    def poll(self) -> list[Job]:
        """Start queued jobs while fewer than `max_running` are alive; returns all jobs."""
        jobs = self.jobs()
        running = sum(j.state == "started" and j.alive() for j in jobs)
        for job in jobs:
            if job.state == "queued" and running < self.max_running:
                self._start(job)
                running += 1
        return self.jobs()

    def cancel(self, job_id: str) -> Job:
        """Stop a job: a queued one never starts, a running one gets SIGTERM (status 'cancelled')."""
        job = self.get(job_id)
        if job.state == "started" and job.alive():
            try:
                os.killpg(job.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        job.state = "cancelled"
        self._save(job)
        return job

    def clear_finished(self) -> int:
        """Forget every job that is neither queued nor running: its record, config and log go
        (the run file it wrote stays). Returns how many were removed."""
        gone = [j for j in self.jobs() if not j.active()]
        for job in gone:
            self._forget(job)
        return len(gone)

    def delete_run(self, path: str | Path) -> Path:
        """Delete a run file of this data directory, with the records of the finished jobs that
        wrote it (so its name is free again). Refused for a file outside the data directory, in
        the bundled demo (read-only), or that a queued or running job writes."""
        target = self._own_run_file(path)
        target.unlink()
        for job in self.jobs():
            if Path(job.out) == target:
                self._forget(job)
        return target

    def rename_run(self, path: str | Path, name: str):
        """Change a run file's display name (:func:`ulviz.store.runs.rename_run`), with the refusals
        of :meth:`delete_run`. Returns the new config."""
        from ..store.runs import rename_run

        return rename_run(self._own_run_file(path), name)

    def _own_run_file(self, path: str | Path) -> Path:
        from ..studies.demo import DEMO_DIR
        from ..store.runs import open_run

        target = inside(self.data_dir, path)
        demo = DEMO_DIR.resolve()
        if target == demo or demo in target.parents:
            raise UlvizError(f"{target.name} belongs to the bundled demo ({demo}), which is read-only; "
                             "copy the demo elsewhere to change it")
        if not target.is_file():
            raise UlvizError(f"{path}: no such run file")
        if any(Path(j.out) == target and j.active() for j in self.jobs()):
            raise UlvizError(f"{target.name} is written by a job that is queued or running; cancel it first")
        try:
            status = open_run(target).status
        except UlvizError:
            status = "unreadable"  # no writer to protect: it may be deleted
        if status == "running":  # "running" only while its writer lives: a process that is not our job
            raise UlvizError(f"{target.name} is still being written; wait until its run ends")
        return target

    def _forget(self, job: Job) -> None:
        for f in (self.dir / f"{job.id}.json", self.dir / f"{job.id}.config.json", Path(job.log)):
            if f.parent == self.dir:  # a record names its log: never remove a file elsewhere
                f.unlink(missing_ok=True)

    def jobs(self) -> list[Job]:
        """Every job record, oldest first (unreadable records are skipped)."""
        if not self.dir.exists():
            return []
        out = []
        for f in sorted(self.dir.glob("*.json")):
            try:
                out.append(Job(**json.loads(f.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return sorted(out, key=lambda j: j.created)

    def get(self, job_id: str) -> Job:
        for j in self.jobs():
            if j.id == job_id:
                return j
        raise UlvizError(f"no job {job_id!r}")

    def _start(self, job: Job) -> None:
        if job.kind == "sweep":
            command = [sys.executable, "-m", "ulviz.cli", "sweep", job.config["sweep"],
                       "--parallel", str(job.config.get("parallel", 1))]
        else:
            config_file = self.dir / f"{job.id}.config.json"
            config_file.write_text(json.dumps(job.config))
            command = [sys.executable, "-m", "ulviz.cli", "train", "--config", str(config_file), "--out", job.out,
                       "--quiet"]
        with open(job.log, "ab") as log:
            proc = subprocess.Popen(
                command,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                cwd=self.data_dir, env=worker_env())
        job.pid, job.state = proc.pid, "started"
        self._save(job)

    def _save(self, job: Job) -> None:
        tmp = self.dir / f".{job.id}.json.tmp"
        tmp.write_text(json.dumps(asdict(job)))
        os.replace(tmp, self.dir / f"{job.id}.json")  # atomic: a reader never sees half a record
