"""Small helpers shared by the dashboard's pages; the only module of the package importing streamlit.

Readers are cached by (path, size, modification time), so a page reruns instantly on files that
did not change and refreshes as soon as a job appends an epoch. Library errors become one
``st.error`` box, never a traceback.

Session state that must outlive a page switch (the data directory, the hidden runs) lives under
plain keys: Streamlit deletes a widget's own key at the end of any run that did not draw that
very widget, and the "same" widget on another page is another widget (its id includes the page).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import streamlit as st
from streamlit.errors import StreamlitAPIException

from ..core.errors import UlvizError
from ..measure.sal_runs import describe_sal
from ..store.runs import find_runs, open_run, run_labels
from . import plots

_DIR_KEY = "ulviz_data_dir"  # the chosen data directory (plain key)
_DIR_BOX = "ulviz_data_dir_box"  # its sidebar box (widget key)
_HIDDEN_KEY = "ulviz_hidden"  # resolved paths of the run files hidden in this session (plain key)
_HIDE_BOX = "ulviz_hide_box"  # the home page's picker of hidden runs (widget key)
_FLASH_KEY = "ulviz_flash"  # a success message to show after the next rerun


def page(title: str, intro: str) -> None:
    """The page's config, title and one-paragraph introduction (call first on every page)."""
    st.set_page_config(page_title=f"{title} · ulviz", layout="wide")
    st.title(title)
    st.caption(intro)


def runs_or_stop(need_sal: bool = False, message: str = "No readable run files in the data directory.") -> dict:
    """The readable, not hidden runs of the chosen data directory; ends the page with `message` if none."""
    runs = readable_runs(data_dir(), need_sal=need_sal)
    if not runs:
        st.info(message + (" Some runs are hidden: show them on the home page." if hidden_paths() else ""))
        st.stop()
    return runs


# -- the data directory ---------------------------------------------------------------------

def default_data_dir() -> str:
    """$ULVIZ_DATA_DIR, else ``data`` (relative to where the dashboard was started)."""
    return os.environ.get("ULVIZ_DATA_DIR", "").strip() or "data"


def chosen_data_dir() -> Path:
    """The data directory of this session, without drawing the sidebar box."""
    return Path(str(st.session_state.get(_DIR_KEY, "")).strip() or default_data_dir()).expanduser()


def _keep_data_dir() -> None:
    # on_change runs before the rerun, so the plain key already holds the new value when the page
    # reads it; an emptied box means "the default", never the working directory
    value = str(st.session_state.get(_DIR_BOX, "")).strip() or default_data_dir()
    st.session_state[_DIR_KEY] = st.session_state[_DIR_BOX] = value


def data_dir() -> Path:
    """The data directory chosen in the sidebar box, shared by every page through the session.
    The first call in a run draws the box; later calls return the same directory."""
    chosen = str(chosen_data_dir())
    st.session_state[_DIR_KEY] = chosen
    try:
        st.session_state[_DIR_BOX] = chosen  # back into a box a page switch emptied
    except StreamlitAPIException:  # refused once the box is drawn in this run: drawn already
        return Path(chosen)
    st.sidebar.text_input("Data directory", key=_DIR_BOX, on_change=_keep_data_dir,
                          help="Run files (*.h5) are looked for here and below; new runs go to runs/. "
                               f"Empty = the default, {default_data_dir()}.")
    return Path(chosen)


# -- runs -------------------------------------------------------------------------------------

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


def all_runs(directory: Path) -> tuple[dict[str, object], dict[Path, str]]:
    """(label -> Run for every readable run file, hidden ones included; path -> error of the
    others). Labels follow :func:`ulviz.store.runs.run_labels`, computed over all of them, so hiding a
    run never relabels another."""
    runs, problems = [], {}
    for p in find_runs(directory):
        try:
            runs.append(load_run(p))
        except UlvizError as e:
            problems[p] = str(e)
    return dict(zip(run_labels(runs), runs)), problems


def readable_runs(directory: Path, need_sal: bool = False, include_hidden: bool = False) -> dict[str, object]:
    """label -> Run for every readable run file not hidden in this session (unreadable ones
    reported once each, in an error box); with `need_sal`, only runs that have SAL."""
    runs, problems = all_runs(directory)
    hidden = set() if include_hidden else hidden_paths()
    for path, msg in problems.items():
        if path.resolve() not in hidden:
            st.error(msg)
    return {label: run for label, run in runs.items()
            if run.path.resolve() not in hidden and (not need_sal or len(run.sal_epochs) > 0)}


def visible_paths(directory: Path) -> list[Path]:
    """The run files under `directory` that are not hidden in this session (readable or not)."""
    hidden = hidden_paths()
    return [p for p in find_runs(directory) if p.resolve() not in hidden]


def hidden_paths() -> set[Path]:
    """The run files hidden in this session, as resolved paths (compare ``path.resolve()``)."""
    return {Path(p) for p in st.session_state.get(_HIDDEN_KEY, ())}


def set_hidden(paths: Iterable) -> None:
    """Hide exactly these run files in this session (every page leaves them out)."""
    st.session_state[_HIDDEN_KEY] = sorted(str(Path(p).resolve()) for p in paths)


def _keep_hidden() -> None:
    set_hidden(st.session_state[_HIDE_BOX])


def hidden_runs_picker(options: list[str], describe) -> None:
    """A multiselect of run files (resolved path strings, shown by `describe`) to hide in this
    session. Refilled from the session's list each run: its own key is dropped on other pages."""
    st.session_state[_HIDE_BOX] = [p for p in options if Path(p) in hidden_paths()]
    st.multiselect("Hidden runs (this session: every page leaves them out)", options, format_func=describe,
                   key=_HIDE_BOX, on_change=_keep_hidden)


def label_of(path, directory: Path | None = None) -> str:
    """The label of the run file at `path` among the runs of the data directory (the one rule of
    :func:`ulviz.store.runs.run_labels`); its file name if it is not a readable run there."""
    runs, _ = all_runs(chosen_data_dir() if directory is None else directory)
    target = Path(path).resolve()
    return next((label for label, run in runs.items() if run.path.resolve() == target), Path(path).name)


def colours(directory: Path | None = None) -> dict[str, str]:
    """label -> colour for every readable run of the data directory (hidden ones included), from
    each run's identity (its creation stamp and file), oldest first: the same run has the same
    colour on every page and figure, and keeps it when runs are added (plots.run_colours)."""
    runs, _ = all_runs(chosen_data_dir() if directory is None else directory)
    by_age = sorted(runs.items(), key=lambda item: (item[1].created, str(item[1].path)))
    return plots.run_colours([(label, f"{run.created}|{Path(run.path).resolve()}", is_clean(run))
                              for label, run in by_age])


def is_clean(run) -> bool:
    return run.config.poison.method == "clean"


def clean_name(runs: dict) -> str | None:
    """The label of the first clean run (in file-path order, as the UD table picks it), if any."""
    return next((n for n, r in runs.items() if is_clean(r)), None)


def clean_first(runs: dict) -> list[str]:
    """Run labels with clean runs first, then by label."""
    return sorted(runs, key=lambda n: (not is_clean(runs[n]), n))


def pick_runs(runs: dict, label: str, default_count: int = 2, key: str | None = None) -> list[str]:
    """A multiselect of run labels, clean runs first. The default holds only runs comparable with
    the clean reference (same dataset, model, width and task: :func:`ulviz.measure.compare.comparable`);
    a caption under it names the runs left out of the default and why."""
    from ..measure.compare import comparable

    names = clean_first(runs)
    reference = clean_name(runs) or (names[0] if names else None)
    keep, left_out = comparable(runs, reference) if reference else (names, {})
    default = [n for n in names if n in keep][:default_count]
    chosen = st.sidebar.multiselect(label, names, default=default, key=key)
    if left_out:
        st.sidebar.caption(f"Left out of the default, not comparable with the clean reference {reference}: "
                           + "; ".join(f"{n} ({why})" for n, why in left_out.items()) + ".")
    return chosen


def warn_incomparable(runs: dict, chosen: list[str], what: str = "shown side by side") -> None:
    """A warning when the chosen runs differ in dataset, model, width or task (their numbers are
    not on one scale)."""
    from ..measure.compare import comparable

    if len(chosen) > 1:
        _, left_out = comparable({n: runs[n] for n in chosen}, chosen[0])
        if left_out:
            st.warning(f"Not comparable with {chosen[0]} but {what}: "
                       + "; ".join(f"{n} ({why})" for n, why in left_out.items()) + ".")


# -- what SAL a run holds -------------------------------------------------------------------

def describe_epochs(epochs) -> str:
    """`epochs` in words: "epoch 3", "epochs 1–30" when consecutive, else a list or a span."""
    e = [int(x) for x in np.asarray(epochs).ravel()]
    if not e:
        return "no epoch"
    if len(e) == 1:
        return f"epoch {e[0]}"
    if e == list(range(e[0], e[-1] + 1)):
        return f"epochs {e[0]}–{e[-1]}"
    if len(e) <= 8:
        return "epochs " + ", ".join(map(str, e))
    return f"{len(e)} epochs between {e[0]} and {e[-1]}"


def sal_summary(runs: dict) -> str:
    """One sentence per distinct way SAL was computed among `runs` (label -> Run)."""
    groups: dict[str, list[str]] = {}
    for label, run in runs.items():
        groups.setdefault(describe_sal(run.sal_settings, run.sal_epochs), []).append(label)
    if len(groups) == 1:
        return f"How it was measured: {next(iter(groups))}."
    return " ".join(f"{', '.join(labels)}: {text}." for text, labels in groups.items())


# -- messages -------------------------------------------------------------------------------

def guard(fn, *args, **kwargs):
    """Call a library function; a UlvizError becomes an error box and None."""
    try:
        return fn(*args, **kwargs)
    except UlvizError as e:
        st.error(str(e))
        return None


def show_warnings(messages: Iterable[str], what: str = "warnings") -> None:
    """Warnings without the stack: repeats dropped, up to three in one box, more folded into an
    expander that says how many."""
    unique = list(dict.fromkeys(m for m in messages if m))
    if not unique:
        return
    body = "\n".join(f"- {m}" for m in unique)
    if len(unique) <= 3:
        st.warning(body)
    else:
        with st.expander(f"⚠️ {len(unique)} {what}"):
            st.warning(body)


def act(action, *args, done: str, reset: Iterable[str] = ()) -> None:
    """Call a library action that changes files: a refusal (UlvizError) becomes an error box;
    success reruns the page (so every list shows the change) with `done` shown after the rerun and
    the widgets keyed `reset` back to their defaults (a confirmation must not stay ticked)."""
    try:
        action(*args)
    except UlvizError as e:
        st.error(str(e))
        return
    for key in reset:
        st.session_state.pop(key, None)
    flash(done)
    st.rerun()


def flash(message: str) -> None:
    """Show `message` as a success box after the next rerun (st.rerun() discards what this run drew)."""
    st.session_state[_FLASH_KEY] = message


def show_flash() -> None:
    """The message left by :func:`flash`, once."""
    message = st.session_state.pop(_FLASH_KEY, None)
    if message:
        st.success(message)


def count_words(n: float) -> str:
    """A count for a sentence: 28,224 -> "28 thousand", 3.1e6 -> "3.1 million" (never "0.0 M")."""
    n = float(n)
    for size, word in ((1e9, "billion"), (1e6, "million"), (1e3, "thousand")):
        if n >= size:
            return f"{n / size:.3g} {word}"
    return f"{n:,.0f}"


def duration_words(seconds: float) -> str:
    """"45 s", "3 min 20 s", "1 h 5 min"."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def progress_callback(text: str, slot=None):
    """A progress(done, total) callback drawing a Streamlit progress bar with the time left,
    estimated from the measured time per point since the first report (what is already cached
    costs nothing, so the clock starts at the first computed point). The bar appears only if
    something is computed and disappears when it completes."""
    import time

    slot = slot if slot is not None else st.empty()
    start: list = []  # (time, done) of the first report

    def progress(done: int, total: int) -> None:
        if done >= total:
            slot.empty()
            return
        now = time.perf_counter()
        if not start:
            start.append((now, done))
        t0, d0 = start[0]
        left = ""
        if done > d0:
            left = f", about {duration_words((now - t0) / (done - d0) * (total - done))} left"
        slot.progress(min(done / max(total, 1), 1.0), text=f"{text}: {done}/{total} points{left}")
    return progress


def landscapes_on_request(requests: dict, key: str) -> dict:
    """Landscapes of the runs in `requests` (label -> (path, kind, run_landscape keywords with a
    `cache_file`)): the cached ones at once; the others only after their cost is shown and the
    user asks, with a Cancel button while they run (a click reruns the page, which stops the
    work; the points computed so far are kept, so the next request resumes)."""
    from ..measure.landscape.runs import landscape_cost, run_landscape
    from ..store.runs import open_run

    done, missing, partial = {}, [], {}
    for label, (path, kind, kwargs) in requests.items():
        land = guard(run_landscape, path, kind, compute=False, **kwargs)
        if land is not None and land.settings.get("complete", 1.0) >= 1.0:
            done[label] = land
        else:
            missing.append(label)
            partial[label] = land.settings.get("complete", 0.0) if land is not None else 0.0
    if not missing:
        return done
    path, kind, kwargs = requests[missing[0]]
    points, samples = guard(landscape_cost, open_run(path), kind, kwargs.get("resolution", 41),
                            kwargs.get("split", "test"), kwargs.get("subset")) or (0, 0)
    kept = {label: partial[label] for label in missing if partial.get(label)}
    st.info(f"Not cached yet for {', '.join(missing)}: {points:,} points × {samples:,} samples = "
            f"{count_words(points * samples)} image forward passes each. Fewer points or samples make it faster; "
            "computed points are kept, so a cancelled landscape resumes where it stopped."
            + ("".join(f" Kept from before for {label}: {round(f * points):,} of {points:,} points ({f:.0%})."
                       for label, f in kept.items())))
    go, stop = st.columns([1, 1])
    if go.button(f"Compute {len(missing)} landscape{'s' if len(missing) > 1 else ''}", type="primary", key=key):
        stop.button("Cancel", key=f"{key}-cancel", help="Stops at once; the points computed so far are kept.")
        for label in missing:
            path, kind, kwargs = requests[label]
            # feedback at once: loading the data and drawing the directions take a while before the
            # first point, and the progress bar replaces this status when points come in
            with st.status(f"Preparing {label}: loading its data and weights, drawing directions ...") as status:
                land = guard(run_landscape, path, kind, progress=progress_callback(f"computing {label}"), **kwargs)
                status.update(label=f"{label}: done" if land is not None else f"{label}: stopped", state="complete")
            if land is not None:
                done[label] = land
    return done


# -- figures with their exports -------------------------------------------------------------------

_MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf", "csv": "text/csv"}


def _slug(name: str) -> str:
    import re
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "figure"


def export_files(fig, data=None) -> dict[str, object]:
    """Format -> a zero-argument function returning that file's content (bytes or text): png,
    svg and pdf rendered by plotly.js (:func:`ulviz.app.plots.figure_image`), csv the data behind the
    figure (`data` when given, else every trace's points, :func:`ulviz.app.plots.figure_data`). The
    images only where static export can run here."""
    table = data if data is not None else plots.figure_data(fig)
    files: dict[str, object] = {}
    if plots.export_problem() is None:
        for fmt in plots.EXPORT_FORMATS:
            files[fmt] = lambda fmt=fmt: plots.figure_image(fig, fmt)
    files["csv"] = lambda: table.to_csv(index=False)
    return files


def chart(fig, name: str, data=None, caption: str | None = None) -> None:
    """A plotly figure, full width, with download buttons under it: PNG, SVG and PDF (vector, for a
    paper) and the data behind it as CSV. Each file is made only when its button is clicked, and
    the click does not rerun the page. `name`: the files' name, unique on the page (it keys the
    buttons); `data`: the table behind the figure (default: the points of its traces)."""
    st.plotly_chart(fig, width="stretch")
    files = export_files(fig, data)
    slug = _slug(name)
    with st.container(horizontal=True, horizontal_alignment="right", gap="small"):
        for fmt, make in files.items():
            st.download_button(fmt.upper(), make, file_name=f"{slug}.{fmt}", mime=_MIME[fmt], key=f"export-{slug}-{fmt}",
                               on_click="ignore", type="tertiary", icon=":material/download:",
                               help=("the data behind the figure" if fmt == "csv" else f"the figure as {fmt.upper()}"))
    problem = plots.export_problem()
    if problem:
        st.caption(f"Only the CSV can be downloaded here: {problem}.")
    if caption:
        st.caption(caption)
