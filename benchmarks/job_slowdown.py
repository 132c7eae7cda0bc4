"""How much an open dashboard page slows a background training job (target: <= 1.5x).

Launches the dashboard as `make app` does (`streamlit run app.py` from the repository root, the
project's .streamlit/config.toml, the .venv inside the tree; only the port is chosen here), on a
copy of the bundled demo in a data directory *inside* the tree (data/_slowdown-*, removed
afterwards), so that a job's writes land where Streamlit's file watcher would see them. Then the
same CLI training job runs alternately with no browser session and with the home page open in
headless chromium (its jobs fragment reruns every 2 s), and the per-epoch training time (the run
file's `seconds` column, epoch 0 and the warm-up epoch 1 left out) is compared, as is the job's
wall-clock time.

    .venv/bin/python benchmarks/job_slowdown.py [--rounds 2] [--epochs 10] [--sal exact]
    .venv/bin/python benchmarks/job_slowdown.py --file-watcher auto   # Streamlit's default: the defect

Prints one line per job and the ratio with page / without. Needs /usr/bin/chromium and playwright.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# the job: lenet5 on digits, as the home page's form proposes, with small batches so that an epoch
# trains long enough (about 0.3 s on an idle machine) to be timed
JOB = ["--dataset", "digits", "--model", "lenet5", "--batch-size", "16", "--quiet", "--overwrite"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def data_dir_in_tree(prefix: str = "_slowdown"):
    """A copy of the bundled demo under data/ (inside the tree, as a user's data directory is);
    yields its path relative to the repository root; removed afterwards."""
    rel = Path("data") / f"{prefix}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(ROOT / "data" / "demo", ROOT / rel / "demo")
    try:
        yield rel
    finally:
        shutil.rmtree(ROOT / rel, ignore_errors=True)


@contextlib.contextmanager
def dashboard(data: Path, log: Path | None = None, flags: tuple[str, ...] = ()):
    """`make app`'s command (only the port added, and `flags`) on `data`; yields the URL."""
    port = free_port()
    out = open(log, "wb") if log else tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), *flags],
                            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "ULVIZ_DATA_DIR": str(data)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    out.seek(0)
                    raise RuntimeError("streamlit did not start:\n" + out.read().decode(errors="replace")[-3000:])
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


def wait_idle(page, timeout_ms: int = 180_000) -> None:
    """Until the script has finished (no running indicator) and plotly has drawn every chart."""
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)
    page.wait_for_function(
        "[...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')]"
        ".every(c => c.querySelector('svg.main-svg'))", timeout=timeout_ms)


def run_job(out: Path, epochs: int, extra: tuple[str, ...] = ()) -> dict:
    """One CLI training job into `out` (relative to the root); its epoch times and wall-clock time."""
    from ulviz.store.runs import open_run

    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ulviz.cli", "train", *JOB, *extra, "--epochs", str(epochs), "--out", str(out)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    seconds = open_run(ROOT / out).metrics["seconds"].tolist()[2:]  # not epoch 0 (no training), nor 1 (warm-up)
    return {"epoch": statistics.mean(seconds), "wall": wall, "seconds": seconds}


def measure(browser, url: str, data: Path, epochs: int, rounds: int, extra: tuple[str, ...] = (),
            report=print) -> dict:
    """Jobs alternately without and with the home page open: without, with, without, with, ...,
    without (rounds+1 without, rounds with). Returns the mean epoch and wall times of each side."""
    results = {"without": [], "with": []}
    for i in range(2 * rounds + 1):
        side = "with" if i % 2 else "without"
        out = data / "runs" / f"slowdown-{i}.h5"
        if side == "with":
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.goto(url)
            page.wait_for_selector('[data-testid="stPlotlyChart"]', timeout=180_000)
            wait_idle(page)
            try:
                r = run_job(out, epochs, extra)
            finally:
                context.close()
        else:
            time.sleep(1.0)  # the closed page's session lets go of its watchers
            r = run_job(out, epochs, extra)
        results[side].append(r)
        report(f"  job {i} {side:>7} page: epoch {r['epoch']:.3f} s (mean of {len(r['seconds'])}), "
               f"wall {r['wall']:.1f} s")
    summary = {side: {k: statistics.mean(r[k] for r in rs) for k in ("epoch", "wall")}
               for side, rs in results.items()}
    summary["ratio_epoch"] = summary["with"]["epoch"] / summary["without"]["epoch"]
    summary["ratio_wall"] = summary["with"]["wall"] / summary["without"]["wall"]
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="jobs with the page open (one more without)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--sal", default="none", choices=["exact", "fast", "none"],
                    help="SAL after every epoch in the job (more writes; not in the timed seconds)")
    ap.add_argument("--file-watcher", choices=["auto", "watchdog", "poll", "none"],
                    help="override the config's server.fileWatcherType (e.g. auto: as before the fix)")
    ap.add_argument("--log", type=Path, help="keep streamlit's output here")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    flags = ("--server.fileWatcherType", args.file_watcher) if args.file_watcher else ()
    with data_dir_in_tree() as data, dashboard(data, args.log, flags) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            print(f"dashboard {url} {' '.join(flags)} on {data}; {args.epochs}-epoch jobs into {data}/runs/")
            s = measure(browser, url, data, args.epochs, args.rounds, ("--sal", args.sal))
        finally:
            browser.close()
    print(f"without a page: epoch {s['without']['epoch']:.3f} s, wall {s['without']['wall']:.1f} s")
    print(f"home page open: epoch {s['with']['epoch']:.3f} s, wall {s['with']['wall']:.1f} s")
    print(f"ratio (page open / without): epoch {s['ratio_epoch']:.2f}x, wall {s['ratio_wall']:.2f}x  (target <= 1.5x)")


if __name__ == "__main__":
    main()
