"""Small helpers shared by the dashboard's pages; the only module of the package importing streamlit.

Readers are cached by (path, size, modification time), so a page reruns instantly on files that
did not change and refreshes as soon as a job appends an epoch. Library errors become one
``st.error`` box, never a traceback.
"""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from .errors import UlvizError
from .store import find_runs, open_run


def page(title: str, intro: str) -> None:
    """The page's config, title and one-paragraph introduction (call first on every page)."""
    st.set_page_config(page_title=f"{title} · ulviz", layout="wide")
    st.title(title)
    st.caption(intro)


def runs_or_stop(need_sal: bool = False, message: str = "No readable run files in the data directory.") -> dict:
    """The readable runs of the chosen data directory; ends the page with `message` if none."""
    runs = readable_runs(data_dir(), need_sal=need_sal)
    if not runs:
        st.info(message)
        st.stop()
    return runs


def data_dir() -> Path:
    """The data directory chosen in the sidebar (shared by every page through the session)."""
    if "data_dir" not in st.session_state:
        st.session_state["data_dir"] = os.environ.get("ULVIZ_DATA_DIR", "data")
    value = st.sidebar.text_input("Data directory", key="data_dir",
                                  help="Run files (*.h5) are looked for here and below; new runs go to runs/.")
    return Path(value)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        s = path.stat()
        return s.st_size, s.st_mtime_ns
    except OSError:
        return -1, -1


@st.cache_data(show_spinner=False, max_entries=256)
def _cached_run(path: str, stamp: tuple[int, int]):
    return open_run(path)


def load_run(path: str | Path):
    """The run file read back (cached until it changes on disk); raises UlvizError."""
    path = Path(path)
    return _cached_run(str(path), _stamp(path))


def readable_runs(directory: Path, need_sal: bool = False) -> dict[str, object]:
    """name -> Run for every readable run file (unreadable ones reported once, in an error box).
    Names are made unique by adding the file name when two runs share one."""
    runs, problems = {}, []
    for p in find_runs(directory):
        try:
            run = load_run(p)
        except UlvizError as e:
            problems.append(str(e))
            continue
        if need_sal and len(run.sal_epochs) == 0:
            continue
        label = run.name if run.name not in runs else f"{run.name} ({p.name})"
        runs[label] = run
    for msg in problems:
        st.error(msg)
    return runs


def is_clean(run) -> bool:
    return run.config.poison.method == "clean"


def clean_name(runs: dict) -> str | None:
    """The name of the first clean run, if any."""
    return next((n for n, r in runs.items() if is_clean(r)), None)


def clean_first(runs: dict) -> list[str]:
    """Run names with clean runs first, then by name."""
    return sorted(runs, key=lambda n: (not is_clean(runs[n]), n))


def pick_runs(runs: dict, label: str, default_count: int = 2, key: str | None = None) -> list[str]:
    """A multiselect of run names, clean runs first by default."""
    names = clean_first(runs)
    return st.sidebar.multiselect(label, names, default=names[:default_count], key=key)


def guard(fn, *args, **kwargs):
    """Call a library function; a UlvizError becomes an error box and None."""
    try:
        return fn(*args, **kwargs)
    except UlvizError as e:
        st.error(str(e))
        return None


def progress_callback(text: str):
    """A progress(done, total) callback drawing a Streamlit progress bar, which appears only if
    something is computed (a cached result shows no bar) and disappears when it completes."""
    slot = st.empty()

    def progress(done: int, total: int) -> None:
        if done >= total:
            slot.empty()
        else:
            slot.progress(min(done / max(total, 1), 1.0), text=f"{text}: {done}/{total} points")
    return progress
