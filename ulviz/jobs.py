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
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import RunConfig
from .errors import UlvizError

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, max_len: int = 64) -> str:
    """A file-name-safe version of a user's run name: letters, digits, '.', '_', '-' only, no
    leading dot, at most `max_len` characters; refuses a name with nothing usable left."""
    clean = _SAFE.sub("-", name.strip()).strip(".-")[:max_len]
    if not clean:
        raise UlvizError(f"run name {name!r} has no usable characters (use letters, digits, '.', '_', '-')")
    return clean


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
    from .store import open_run

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
        self.dir.mkdir(parents=True, exist_ok=True)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        job = Job(job_id, name, str(out), str(self.dir / f"{job_id}.log"), config.to_dict(), created=time.time())
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
        config_file = self.dir / f"{job.id}.config.json"
        config_file.write_text(json.dumps(job.config))
        # the package this dashboard runs from, importable by the job even when not installed
        package_root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        with open(job.log, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ulviz.cli", "train", "--config", str(config_file), "--out", job.out, "--quiet"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                cwd=self.data_dir, env=env)
        job.pid, job.state = proc.pid, "started"
        self._save(job)

    def _save(self, job: Job) -> None:
        tmp = self.dir / f".{job.id}.json.tmp"
        tmp.write_text(json.dumps(asdict(job)))
        os.replace(tmp, self.dir / f"{job.id}.json")  # atomic: a reader never sees half a record
