"""The dashboard in a real headless browser: Debian's chromium driven by Playwright."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(os.environ.get("ULVIZ_SCREENSHOTS", ROOT / "artifacts" / "screenshots"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    pytest.importorskip("playwright")
    if not (ROOT / "data" / "demo" / "clean.h5").exists():
        pytest.skip("no bundled demo")
    data = tmp_path_factory.mktemp("data") / "demo"
    shutil.copytree(ROOT / "data" / "demo", data)  # the pages may add caches: never to the bundle
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--server.address", "127.0.0.1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "ULVIZ_DATA_DIR": str(data)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("streamlit did not start: " + proc.stdout.read().decode()[-2000:])
    yield url
    proc.terminate()
    proc.wait(10)


PAGES = [("", "home", "Unlearnable Distance"), ("Loss_landscape", "landscape", "Loss landscape"),
         ("SAL", "sal", "Sharpness-Aware Learnability"), ("Optimization_paths", "paths", "Optimization paths"),
         ("Unlearnable_Distance", "ud", "Unlearnable Distance")]


def test_every_page_in_chromium(server):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for route, shot, heading in PAGES:
            page.goto(f"{server}/{route}")
            page.wait_for_selector(f"text={heading}", timeout=60000)
            page.wait_for_selector('[data-testid="stPlotlyChart"]', timeout=120000)
            # idle: no running indicator, and plotly has drawn its SVG into every chart
            page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120000)
            page.wait_for_function(
                "[...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')]"
                ".every(c => c.querySelector('svg.main-svg'))", timeout=60000)
            assert page.locator('[data-testid="stException"]').count() == 0, route
            assert page.locator('[data-testid="stAlertContentError"]').count() == 0, route
            assert page.locator('[data-testid="stPlotlyChart"]').count() >= 1, route
            assert page.locator('[data-testid="stCaptionContainer"]').count() >= 1, route
            page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
        browser.close()
