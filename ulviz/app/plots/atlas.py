"""The sharpness atlas (per-layer measures over epochs, their correlation with SAL) and layer surgery.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .style import PALETTE, _colour, _layout, _scale


# -- the sharpness atlas and layer surgery ---------------------------------------------------

ATLAS_SCALE = _scale("Viridis")  # one sequential scale for every sharpness measure (signed ones included)


def shared_range(values: Iterable) -> tuple[float, float]:
    """(lowest, highest) finite value over all `values` (arrays or DataFrames): one colour range
    for panels of one measure drawn side by side."""
    finite = [v[np.isfinite(v)].ravel() for v in (np.asarray(x, dtype=np.float64) for x in values)]
    finite = np.concatenate(finite) if finite else np.array([])
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return lo, hi if hi > lo else lo + 1.0


def measure_heatmap(frame: pd.DataFrame, name: str, label: str, zrange: tuple[float, float] | None = None) -> go.Figure:
    """Layers × epochs heatmap of one sharpness measure of one run (frame: rows = epochs, columns = layers)."""
    zmin, zmax = zrange if zrange is not None else shared_range([frame])
    fig = go.Figure(go.Heatmap(z=frame.to_numpy().T, x=[str(e) for e in frame.index], y=list(frame.columns),
                               colorscale=ATLAS_SCALE, zmin=zmin, zmax=zmax, colorbar=dict(title=""),
                               hovertemplate="epoch %{x}<br>%{y}<br>" + label + " %{z:.4g}<extra></extra>"))
    return _layout(fig, f"{label}: {name}", "epoch", "layer (weight tensor)")


def correlation_bars(table: pd.DataFrame, colours: dict[str, str] | None = None) -> go.Figure:
    """Spearman correlation with SAL per measure (x), one bar per run (table: run, label, rho_all)."""
    fig = go.Figure()
    for i, (run, rows) in enumerate(table.groupby("run", sort=False)):
        fig.add_trace(go.Bar(x=rows["label"], y=rows["rho_all"], name=run, marker_color=_colour(colours, run, i),
                             hovertemplate="%{x}<br>Spearman %{y:.3f}<extra>" + run + "</extra>"))
    fig.update_yaxes(range=[-1, 1])
    fig.update_xaxes(tickangle=-30, automargin=True)
    return _layout(fig, "Rank correlation of each measure with SAL", "measure", "Spearman ρ", barmode="group")


def surgery_bars(table: pd.DataFrame, protected_acc: float, clean_acc: float, title: str) -> go.Figure:
    """Clean-test accuracy per surgery (table: label, accuracy), with the untouched runs as lines."""
    fig = go.Figure(go.Bar(x=table["label"], y=table["accuracy"], marker_color=PALETTE[2],
                           hovertemplate="%{x}<br>accuracy %{y:.3f}<extra></extra>"))
    for y, text, colour in ((protected_acc, "protected run", PALETTE[1]), (clean_acc, "clean run", PALETTE[0])):
        if np.isfinite(y):
            fig.add_hline(y=y, line_dash="dash", line_color=colour, annotation_text=f"{text} {y:.3f}")
    fig.update_xaxes(tickangle=-30, automargin=True)
    return _layout(fig, title, "layers transplanted", "clean-test accuracy")


def surgery_layers(sal: dict[str, np.ndarray], layers: list[str], chosen: list[str],
                   colours: dict[str, str] | None = None) -> go.Figure:
    """Mean SAL of each layer over its SAL epochs for each run (bars), the layers a surgery SPEC
    picks marked on the axis: what the SAL-based SPECs choose from."""
    fig = go.Figure()
    for i, (name, values) in enumerate(sal.items()):
        fig.add_trace(go.Bar(x=layers, y=values, name=name, marker_color=_colour(colours, name, i),
                             hovertemplate="%{x}<br>mean SAL %{y:.3g}<extra>" + name + "</extra>"))
    ticks = [f"<b>▶ {n}</b>" if n in chosen else n for n in layers]
    fig.update_xaxes(tickvals=layers, ticktext=ticks, tickangle=-45)
    fig.update_yaxes(exponentformat="e")
    fig.update_layout(barmode="group")
    fig = _layout(fig, "Mean SAL per layer (▶ = chosen by the SPEC)", "layer (weight tensor)", "mean SAL", height=480)
    # legend above the plot: below it, it sat on the slanted layer names
    fig.update_layout(legend=dict(orientation="h", x=0, y=1.02, yanchor="bottom"), margin=dict(b=170))
    return fig
