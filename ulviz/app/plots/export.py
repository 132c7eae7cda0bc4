"""Export: every figure as PNG, SVG or PDF (kaleido, driving a system Chromium), and the data behind
it as a table for CSV.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go


# -- export: every figure as PNG, SVG, PDF, and the data behind it as CSV ----------------------

EXPORT_FORMATS = ("png", "svg", "pdf")
_BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def export_problem() -> str | None:
    """Why static export (kaleido, which drives a headless Chrome/Chromium) cannot run here, or
    None when it can. BROWSER_PATH names the browser; unset, the usual system paths are tried."""
    import os
    import shutil

    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "static export needs the kaleido package (pip install kaleido)"
    if os.environ.get("BROWSER_PATH"):
        return None if os.path.exists(os.environ["BROWSER_PATH"]) else f"BROWSER_PATH={os.environ['BROWSER_PATH']} does not exist"
    found = next((b for b in _BROWSERS if os.path.exists(b)), None) or shutil.which("chromium") or shutil.which("chrome")
    if found is None:
        return "static export needs Chrome or Chromium (apt-get install chromium, or set BROWSER_PATH)"
    os.environ.setdefault("BROWSER_PATH", found)  # kaleido's browser finder reads it
    return None


def figure_image(fig: go.Figure, fmt: str = "svg", width: int = 1000, height: int | None = None,
                 scale: float = 2.0) -> bytes:
    """The figure as PNG, SVG or PDF bytes, rendered by plotly.js in a headless browser (kaleido).
    Offline: plotly.js comes from the plotly package and MathJax (fetched from a CDN by default)
    is left out, since no figure here typesets LaTeX."""
    import kaleido

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    problem = export_problem()
    if problem:
        raise RuntimeError(problem)
    spec = fig.to_dict()
    height = height or spec.get("layout", {}).get("height") or 560
    return kaleido.calc_fig_sync(spec, opts=dict(format=fmt, width=width, height=height, scale=scale),
                                 kopts=dict(mathjax=False))


def _column(values) -> list:
    if values is None:
        return []
    a = np.asarray(values)
    return list(a.ravel()) if a.ndim else [a.item()]


def figure_data(fig: go.Figure) -> pd.DataFrame:
    """The data drawn in a figure, long form: one row per point of every trace (trace, its name,
    its type, x, y, and z / value where it has them). Heatmaps and contours give one row per cell
    (x, y of the cell, z its value); images are left out (their pixels are not data)."""
    frames = []
    for i, trace in enumerate(fig.data):
        kind = trace.type
        if kind == "image":
            continue
        name = getattr(trace, "name", None) or ""
        if kind in ("heatmap", "contour", "surface"):
            z = np.asarray(trace.z, dtype=float)
            if z.ndim != 2:
                continue
            ny, nx = z.shape
            xs = np.asarray(trace.x) if trace.x is not None else np.arange(nx)
            ys = np.asarray(trace.y) if trace.y is not None else np.arange(ny)
            if kind == "surface":  # x, y may be 1-D grids of the surface's columns and rows
                xs, ys = (xs if xs.ndim == 1 else xs[0]), (ys if ys.ndim == 1 else ys[:, 0])
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            frames.append(pd.DataFrame({"trace": i, "name": name, "type": kind, "x": xx.ravel(), "y": yy.ravel(),
                                        "z": z.ravel()}))
        elif kind == "parcoords":
            frames.append(pd.DataFrame({d.label: _column(d.values) for d in trace.dimensions}).assign(
                trace=i, name=name, type=kind))
        else:
            x, y = _column(getattr(trace, "x", None)), _column(getattr(trace, "y", None))
            n = max(len(x), len(y))
            if n == 0:
                continue
            frame = pd.DataFrame({"trace": i, "name": name, "type": kind,
                                  "x": x if len(x) == n else [None] * n, "y": y if len(y) == n else [None] * n})
            z = _column(getattr(trace, "z", None))
            if len(z) == n:
                frame["z"] = z
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["trace", "name", "type", "x", "y"])
    return pd.concat(frames, ignore_index=True)
