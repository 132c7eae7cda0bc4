"""The dashboard in a real headless browser (Debian's chromium driven by Playwright), run as it is used.

The server starts the way `make app` starts it: `streamlit run app.py` from the repository root, so
the project's .streamlit/config.toml applies and the .venv lies inside the watched tree; only the
port is chosen here. Its data directory is a copy of the bundled demo *inside* the tree
(data/_browsertest-*, ignored by git and removed afterwards), where a user's data/ would be: a
directory outside the tree would hide anything that watches the tree.

- every page, found in pages/ (a new page is covered without editing this file), is reached by
  clicking its sidebar link, checked (no exception, no error box, a drawn chart, a caption) and
  screenshotted to artifacts/screenshots/<page>.png (ULVIZ_SCREENSHOTS overrides the folder);
- the sidebar's "Data directory" keeps what the user typed across the pages;
- a training job run while a page is open is not slowed by more than 1.5x (the server once
  slowed it 2-20x: its file watcher kept rebuilding inotify watches over the whole tree).
"""
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SHOTS = Path(os.environ.get("ULVIZ_SCREENSHOTS", ROOT / "artifacts" / "screenshots"))
DEMO = ROOT / "data" / "demo"
SLOWDOWN_LIMIT = 1.5  # a job's epoch time with a page open / without a browser (the requirement)
# lenet5 on digits as the home page's form proposes, in small batches so that an epoch trains long
# enough to be timed (a few tenths of a second on an idle machine)
EPOCHS = 10
JOB = ["--dataset", "digits", "--model", "lenet5", "--batch-size", "16", "--epochs", str(EPOCHS), "--quiet",
       "--overwrite"]


def pages() -> list[tuple[str, str]]:
    """(url path, screenshot name) of every page: the home page (app.py), then pages/*.py in the
    sidebar's order, named as Streamlit names them (pages/1_Loss_landscape.py: Loss_landscape)."""
    from streamlit.source_util import page_icon_and_name, page_sort_key

    found = [("", "home")]
    for f in sorted((ROOT / "pages").glob("*.py"), key=page_sort_key):
        _, name = page_icon_and_name(f)
        found.append((name, name.lower()))
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, data: Path, proc: subprocess.Popen, log: Path, env: dict):
        self.url, self.data, self.proc, self.log, self.env = url, data, proc, log, env

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    pytest.importorskip("playwright")
    if not (DEMO / "clean.h5").exists():
        pytest.skip("no bundled demo")
    data = Path("data") / f"_browsertest-{uuid.uuid4().hex[:8]}"  # relative to the root, like the default "data"
    shutil.copytree(DEMO, ROOT / data / "demo")  # the pages may add caches: never to the bundle
    tmp = tmp_path_factory.mktemp("browser")
    log = tmp / "streamlit.log"
    env = {**os.environ, "ULVIZ_DATA_DIR": str(data), "ULVIZ_CACHE_DIR": str(tmp / "poison-cache")}
    port = _free_port()
    with open(log, "wb") as out:  # a file, not a pipe nobody reads: a chatty server would block on it
        # `make app`: .venv/bin/streamlit run app.py, from the root; nothing but the port added
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    srv = Server(f"http://127.0.0.1:{port}", data, proc, log, env)
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(srv.url + "/_stcore/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("streamlit did not start:\n" + srv.log_tail())
                time.sleep(0.3)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(ROOT / data, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _wait_idle(page, timeout_ms: int = 180_000) -> None:
    """Until the script has finished (no running indicator, twice 0.3 s apart: the home page's jobs
    fragment reruns every 2 s) and plotly has drawn its SVG into every chart."""
    for _ in range(2):
        page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)
        page.wait_for_function(
            "[...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')]"
            ".every(c => c.querySelector('svg.main-svg'))", timeout=timeout_ms)
        page.wait_for_timeout(300)


def _heading(page) -> str:
    return page.locator("h1").first.inner_text(timeout=60_000).strip()


def _data_dir_box(page):
    return page.locator('[data-testid="stSidebar"] input[aria-label="Data directory"]')


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("h1", timeout=120_000)
    page.wait_for_selector('[data-testid="stPlotlyChart"]', timeout=180_000)
    _wait_idle(page)


def _click_to(page, server, route: str, previous_heading: str) -> str:
    """Click the sidebar link to `route`; wait until that page has run. Returns its heading."""
    nav = page.locator('[data-testid="stSidebarNav"]')
    link = nav.locator(f'a[href="{server.url}/{route}"]')
    if link.count() == 0:  # a long page list is folded behind "View more"
        more = nav.get_by_text("View more")
        if more.count():
            more.first.click()
    assert link.count() == 1, f"no sidebar link to /{route}: {nav.inner_text()}"
    link.click()
    page.wait_for_url(f"{server.url}/{route}", timeout=60_000)
    page.wait_for_function("h => { const e = document.querySelector('h1'); return e && e.innerText.trim() "
                           "&& e.innerText.trim() !== h; }", arg=previous_heading, timeout=120_000)
    # a chart, or on a page that computes only when asked, its button
    wanted = '[data-testid="stButton"]' if route.lower() in ON_REQUEST else '[data-testid="stPlotlyChart"]'
    page.wait_for_selector(wanted, timeout=180_000)
    _wait_idle(page)
    return _heading(page)


def _screenshot(page, name: str) -> None:
    """The whole page to SHOTS/<name>.png. Streamlit scrolls its main area inside the window, so a
    "full page" screenshot shows only the window: the window is made as tall as the content first."""
    size = page.viewport_size
    height = page.evaluate("Math.max(...[...document.querySelectorAll("
                           "'[data-testid=\"stMain\"], [data-testid=\"stSidebarContent\"]')]"
                           ".map(e => e.scrollHeight), 0)")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(int(height) + 80, 16000))})
    try:
        page.wait_for_timeout(500)  # plotly relayouts on the resize
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    finally:
        page.set_viewport_size(size)


# pages that compute only when asked (a button), so the bundled demo shows no chart there before a click
ON_REQUEST = {"sharpness_atlas", "layer_surgery"}


def _check_page(page, name: str) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, f"{name}: {exceptions.first.inner_text()}"
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, f"{name}: {errors.first.inner_text()}"
    charts = page.locator('[data-testid="stPlotlyChart"]')
    if name in ON_REQUEST and charts.count() == 0:
        assert page.locator('[data-testid="stButton"]').count() >= 1, f"{name}: no chart and nothing to ask for one"
        return
    assert charts.count() >= 1, name
    assert charts.first.locator("svg.main-svg").count() >= 1, f"{name}: plotly drew nothing"
    assert page.locator('[data-testid="stCaptionContainer"]').count() >= 1, f"{name}: no caption"


def _download(page, label: str) -> bytes:
    """Click the first export button labelled `label` and return the file it downloads."""
    button = page.locator('[data-testid="stDownloadButton"] button', has_text=label).first
    with page.expect_download(timeout=180_000) as download:
        button.click()
    return Path(download.value.path()).read_bytes()


def _check_exports(page) -> None:
    """The first chart's exports: its data as CSV, and (where kaleido finds a browser) a vector SVG."""
    from ulviz.app import plots

    csv = _download(page, "CSV").decode("utf-8")
    assert csv.splitlines()[0].count(",") >= 2 and len(csv.splitlines()) > 2, csv[:200]
    if plots.export_problem() is None:
        svg = _download(page, "SVG")
        assert svg.lstrip().startswith(b"<svg") and b"</svg>" in svg, svg[:100]


def test_every_page_in_chromium(server, browser):
    """Home, then a click on each page's sidebar link in turn, then back home."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    routes = pages()
    assert any(name == "teaching" for _, name in routes), routes  # pages/5_Teaching.py is listed
    typed = str(ROOT / server.data)  # the same directory as the server's, spelt differently: absolute
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        _open(page, server.url)
        heading = _heading(page)
        box = _data_dir_box(page)
        assert box.input_value() == str(server.data)
        box.fill(typed)
        box.press("Enter")
        page.wait_for_function("t => document.querySelector('[data-testid=\"stMain\"]').innerText.includes(t)",
                               arg=typed, timeout=60_000)  # the home page names its directory
        _wait_idle(page)
        _check_page(page, "home")
        _screenshot(page, "home")
        nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
        assert "Home" in nav.splitlines() and "app" not in nav.splitlines(), nav  # not the entry file's name
        _check_exports(page)
        seen = {heading}
        for route, name in routes[1:] + routes[:1]:
            heading = _click_to(page, server, route, heading)
            _check_page(page, name)
            if name == "teaching":
                assert heading.startswith("Teaching"), heading
            if route:
                _screenshot(page, name)
                assert heading not in seen, f"{name}: the heading of another page, {heading!r}"
                seen.add(heading)
            if box.count():  # every page that reads runs shows the box; it must keep what was typed
                assert box.input_value() == typed, f"{name}: the data directory was reset"
        assert _data_dir_box(page).input_value() == typed  # home again, after every other page
    finally:
        context.close()


def _inotify_watches(pid: int) -> int | None:
    """inotify watches held by process `pid` (Linux), or None where /proc cannot tell."""
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    if not fdinfo.is_dir():
        return None
    n = 0
    for f in fdinfo.iterdir():
        try:
            n += sum(line.startswith("inotify wd:") for line in f.read_text().splitlines())
        except OSError:
            pass
    return n


def _cpu_seconds(pid: int) -> float:
    """CPU time used so far by process `pid` (Linux; NaN elsewhere): for the report only."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _job(server, out: Path, server_load: list) -> list[float]:
    """A CLI training job into `out`; its per-epoch training seconds, less epoch 0 (no training) and
    epoch 1 (warm-up). Appends the server's CPU use meanwhile (in cores) to `server_load`."""
    from ulviz.store.runs import open_run

    (ROOT / out).parent.mkdir(parents=True, exist_ok=True)  # `ulviz train --out` refuses a missing directory
    cpu, start = _cpu_seconds(server.proc.pid), time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ulviz.cli", "train", *JOB, "--out", str(out)], cwd=ROOT,
                       env=server.env, capture_output=True, text=True, timeout=900)
    server_load.append((_cpu_seconds(server.proc.pid) - cpu) / (time.perf_counter() - start))
    assert r.returncode == 0, r.stderr[-3000:]
    seconds = open_run(ROOT / out).metrics["seconds"].tolist()
    assert len(seconds) == EPOCHS + 1, seconds
    return seconds[2:]


def test_open_page_does_not_slow_a_job(server, browser):
    """The same job into <data>/runs/, alternately with no browser and with the home page open (its
    jobs fragment reruns every 2 s): without, with, without; once more with and without when the first
    round is over the limit, against a noisy machine. Mean epoch time with / without <= 1.5 (the one
    timing assertion). And the cause, directly: the server holds no inotify watch over the tree and
    never overflows an inotify queue."""
    times = {"without": [], "with": []}
    jobs = []  # (side, mean epoch time) of each job in turn, for the report
    server_load = {"without": [], "with": []}  # the server's CPU use during the jobs, in cores
    watches = []
    job = 0

    def run(side: str) -> None:
        nonlocal job
        out = server.data / "runs" / f"slowdown-{job}.h5"
        job += 1
        if side == "without":
            time.sleep(1.0)  # a closed page's session lets go of its watchers
            seconds = _job(server, out, server_load[side])
            times[side] += seconds
            jobs.append((side, statistics.mean(seconds)))
            return
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        try:
            _open(page, server.url)
            for _ in range(5):
                watches.append(_inotify_watches(server.proc.pid))
                time.sleep(0.2)
            seconds = _job(server, out, server_load[side])
            times[side] += seconds
            jobs.append((side, statistics.mean(seconds)))
            _check_page(page, "home, after the job")  # the page lived on beside the job
        finally:
            context.close()

    def ratio() -> float:
        return statistics.mean(times["with"]) / statistics.mean(times["without"])

    for side in ("without", "with", "without"):
        run(side)
    if ratio() > SLOWDOWN_LIMIT:
        for side in ("with", "without"):
            run(side)
    report = (f"mean epoch {statistics.mean(times['with']):.3f} s with the home page open, "
              f"{statistics.mean(times['without']):.3f} s without: {ratio():.2f}x; the server used "
              f"{statistics.mean(server_load['with']):.2f} / {statistics.mean(server_load['without']):.2f} "
              f"CPU cores meanwhile (jobs in turn: "
              + ", ".join(f"{side} {t:.3f} s" for side, t in jobs) + ")")
    print(report)
    problems = []
    if ratio() > SLOWDOWN_LIMIT:
        problems.append(f"over {SLOWDOWN_LIMIT}x")
    # the cause once: Streamlit's default file watcher put an inotify watch on every directory of the
    # tree (.venv included), and rebuilt them all, over and over, once reads and writes in the tree
    # overflowed the kernel's event queue
    most = max((w for w in watches if w is not None), default=0)
    if most > 100:
        problems.append(f"with a page open the server held up to {most} inotify watches: it watches the tree")
    if "Inotify queue overflowed" in server.log_tail(1_000_000):
        problems.append("the server's watcher overflowed its inotify queue:\n" + server.log_tail(1000))
    assert not problems, report + "\n" + "\n".join(problems)


def test_runs_table_shows_a_finished_job_without_a_reload(server, browser):
    """A job launched from the dashboard's job manager while the home page is open: once it ends,
    the runs section (outside the jobs fragment) counts its run, with no reload of the page."""
    from ulviz.app.jobs import JobManager, launch_config
    from ulviz.store.runs import find_runs

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        _open(page, server.url)
        count = ("n => [...document.querySelectorAll('[data-testid=\"stCaptionContainer\"]')]"
                 ".some(e => e.textContent.trim() === `${n} run file(s)`)")
        before = len(find_runs(ROOT / server.data))  # what the home page counts
        assert page.evaluate(count, before)
        manager = JobManager(ROOT / server.data)
        job = manager.launch(launch_config("refresh-probe", "digits", "linear", "clean", epochs=1, sal="none"))
        deadline = time.time() + 240
        while manager.get(job.id).alive() or manager.get(job.id).state == "queued":
            assert time.time() < deadline, "the job did not end"
            manager.poll()
            time.sleep(0.5)
        # the fragment notices within its 2 s period and reruns the whole page: the count outside it grows
        page.wait_for_function(count, arg=before + 1, timeout=60_000)
        _check_page(page, "home, after a job ended")
    finally:
        context.close()
