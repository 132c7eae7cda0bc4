"""Time for each dashboard page to render from the bundled demo's caches (target: <= 2 s each).

Each page runs in Streamlit's AppTest on a copy of data/demo, twice: "cold" with Streamlit's
caches cleared (the run files are read and the cached landscapes loaded, as for a first visit),
and "warm" (a rerun, as after moving a widget). Library imports are done once beforehand, as in a
running server.

    .venv/bin/python benchmarks/page_render.py
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import streamlit as st
from streamlit.testing.v1 import AppTest

import ulviz  # noqa: F401  (imports torch and the library, as a running server already has)
from ulviz.app import plots  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["app.py", "pages/1_Loss_landscape.py", "pages/2_SAL.py", "pages/3_Optimization_paths.py",
         "pages/4_Unlearnable_Distance.py"]


def render(page: str) -> tuple[float, object]:
    at = AppTest.from_file(str(ROOT / page), default_timeout=300)
    start = time.perf_counter()
    at.run()
    return time.perf_counter() - start, at


def main():
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "demo"
        shutil.copytree(ROOT / "data" / "demo", data)
        os.environ["ULVIZ_DATA_DIR"] = str(data)
        os.chdir(ROOT)
        render("pages/4_Unlearnable_Distance.py")  # warm-up: streamlit's own first-use costs
        rows = []
        for page in PAGES:
            st.cache_data.clear()
            cold, at = render(page)
            warm, _ = render(page)
            rows.append({"page": page, "cold_s": cold, "warm_s": warm, "charts": len(at.get("plotly_chart")),
                         "errors": len(at.error) + len(at.exception), "within_2s": "yes" if cold <= 2 else "NO"})
            print(f"{page}: cold {cold:.2f}s warm {warm:.2f}s", flush=True)
    print("\n== page render time from the demo caches (AppTest, CPU) ==")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
