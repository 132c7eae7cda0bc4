"""The teaching page's figures: a model with two weights, its data, loss surfaces, paths, accuracy
and SAL, clean against poisoned.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .landscapes import _z
from .style import ACC_AXIS, PALETTE, _layout


# ---------------------------------------------------------------- teaching page (a model with two weights)

_TEACH_COLOURS = {"clean": PALETTE[0], "poisoned": PALETTE[1]}


def _teach_colour(name: str, i: int) -> str:
    return _TEACH_COLOURS.get(name, PALETTE[i % len(PALETTE)])


def teaching_data(x: dict[str, np.ndarray], y: np.ndarray, marked: np.ndarray | None = None) -> go.Figure:
    """Training inputs side by side (name -> (n, 2)), coloured by class; `marked` (bool, n) rings
    the poisoned points on every panel but the first."""
    names = list(x)
    fig = make_subplots(rows=1, cols=max(len(names), 1), subplot_titles=names, horizontal_spacing=0.08)
    for i, name in enumerate(names):
        for label, colour, symbol in ((1.0, PALETTE[2], "circle"), (-1.0, PALETTE[3], "diamond")):
            keep = y == label
            fig.add_trace(go.Scatter(x=x[name][keep, 0], y=x[name][keep, 1], mode="markers", name=f"class {label:+.0f}",
                                     legendgroup=f"class {label:+.0f}", showlegend=i == 0,
                                     marker=dict(color=colour, symbol=symbol, size=5, opacity=0.7),
                                     hovertemplate="x1 %{x:.2f}<br>x2 %{y:.2f}<extra>" + f"class {label:+.0f}</extra>"),
                          row=1, col=i + 1)
        if marked is not None and i > 0 and marked.any():
            fig.add_trace(go.Scatter(x=x[name][marked, 0], y=x[name][marked, 1], mode="markers", name="poisoned point",
                                     showlegend=True, hoverinfo="skip",
                                     marker=dict(symbol="circle-open", size=9, color="black", line=dict(width=1))),
                          row=1, col=i + 1)
        fig.update_xaxes(title_text="x1 (the true feature)", row=1, col=i + 1)
        fig.update_yaxes(title_text="x2 (where the shortcut goes)", row=1, col=i + 1)
    return _layout(fig, "Training data", "", "", height=400)


def teaching_surfaces(w1: np.ndarray, w2: np.ndarray, surfaces: dict[str, np.ndarray], paths: dict[str, np.ndarray],
                      log_scale: bool = True) -> go.Figure:
    """Exact loss over the whole weight plane (surfaces: name -> (len(w1), len(w2))) side by side on
    one shared colour scale, each with its own gradient-descent path (solid) and the others' (dotted)."""
    names = list(surfaces)
    fig = make_subplots(rows=1, cols=max(len(names), 1), subplot_titles=[f"loss on {n} data" for n in names],
                        horizontal_spacing=0.1)
    z_all = [_z(surfaces[n], log_scale) for n in names]
    finite = np.concatenate([z[np.isfinite(z)].ravel() for z in z_all]) if z_all else np.array([0.0])
    zmin, zmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    label = "log10 loss" if log_scale else "loss (nats)"
    for i, (name, z) in enumerate(zip(names, z_all)):
        col = i + 1
        fig.add_trace(go.Contour(x=w1, y=w2, z=z.T, coloraxis="coloraxis", ncontours=30, name=name,
                                 contours=dict(showlabels=False),
                                 hovertemplate="w1 %{x:.2f}<br>w2 %{y:.2f}<br>" + label + " %{z:.3f}<extra></extra>"),
                      row=1, col=col)
        for j, (other, path) in enumerate(paths.items()):
            own = other == name
            colour = _teach_colour(other, j)
            if own:  # a white line under the path keeps it visible on every colour of the map
                fig.add_trace(go.Scatter(x=path[:, 0], y=path[:, 1], mode="lines", line=dict(color="white", width=5),
                                         showlegend=False, hoverinfo="skip"), row=1, col=col)
            fig.add_trace(go.Scatter(x=path[:, 0], y=path[:, 1], mode="lines", name=f"path on {other} data",
                                     legendgroup=other, showlegend=own, opacity=1.0 if own else 0.6,
                                     line=dict(color=colour, width=3 if own else 1.5, dash="solid" if own else "dot"),
                                     text=[f"step {t}" for t in range(len(path))],
                                     hovertemplate="%{text}<br>w1 %{x:.3f}<br>w2 %{y:.3f}<extra>" + other + "</extra>"),
                          row=1, col=col)
            if own:
                fig.add_trace(go.Scatter(x=path[-1:, 0], y=path[-1:, 1], mode="markers", showlegend=False,
                                         hoverinfo="skip", marker=dict(symbol="circle", size=10, color=colour,
                                                                       line=dict(width=1.5, color="white"))),
                              row=1, col=col)
        if paths:
            start = next(iter(paths.values()))[0]
            fig.add_trace(go.Scatter(x=[start[0]], y=[start[1]], mode="markers", name="start", legendgroup="start",
                                     showlegend=i == 0,
                                     hovertemplate="start<br>w1 %{x:.3f}<br>w2 %{y:.3f}<extra></extra>",
                                     marker=dict(symbol="star", size=15, color="white",
                                                 line=dict(width=1.5, color="black"))),
                          row=1, col=col)
        fig.update_xaxes(title_text="w1 (weight of x1, the true feature)", range=[w1[0], w1[-1]], row=1, col=col)
        fig.update_yaxes(title_text="w2 (weight of x2, the shortcut)", range=[w2[0], w2[-1]], row=1, col=col,
                         scaleanchor="x" if col == 1 else f"x{col}")
    fig.update_layout(coloraxis=dict(colorscale="Viridis", cmin=zmin, cmax=zmax, colorbar=dict(title=label)))
    return _layout(fig, "The whole weight space: exact loss and gradient descent from the same start "
                        "(shared colour scale)", "", "", height=520)


def teaching_accuracy(test_acc: dict[str, np.ndarray], train_acc: dict[str, np.ndarray] | None = None,
                      best: float | None = None) -> go.Figure:
    """Clean-test accuracy (solid) along each path, the accuracy on the data it trained on (dashed)
    and the best any linear model can do on clean data (dotted line)."""
    fig = go.Figure()
    for i, (name, acc) in enumerate(test_acc.items()):
        colour = _teach_colour(name, i)
        fig.add_trace(go.Scatter(x=np.arange(len(acc)), y=acc, mode="lines", name=f"{name}: clean test",
                                 line=dict(color=colour, width=2.5)))
        if train_acc is not None and name in train_acc:
            fig.add_trace(go.Scatter(x=np.arange(len(train_acc[name])), y=train_acc[name], mode="lines",
                                     name=f"{name}: its training data",
                                     line=dict(color=colour, width=1.5, dash="dash")))
    if best is not None:
        fig.add_hline(y=best, line_dash="dot", line_color="grey", annotation_text=f"best possible {best:.3f}",
                      annotation_position="bottom right")
    fig.update_yaxes(range=[0, 1.01])
    return _layout(fig, "Accuracy along each gradient-descent path", "gradient-descent step", ACC_AXIS)


def teaching_sal(sal: dict[str, np.ndarray], floor: float = 1e-8) -> go.Figure:
    """Per-weight SAL along each path (name -> (steps + 1, 2)), one panel per weight, log scale
    (values under `floor` drawn at it)."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=["w1 (the true feature)", "w2 (the shortcut)"])
    for i, (name, s) in enumerate(sal.items()):
        colour = _teach_colour(name, i)
        for k in range(2):
            fig.add_trace(go.Scatter(x=np.arange(len(s)), y=np.maximum(s[:, k], floor), mode="lines",
                                     name=f"{name} data", legendgroup=name, showlegend=k == 0,
                                     line=dict(color=colour, width=2),
                                     hovertemplate="step %{x}<br>SAL %{y:.2e}<extra>" + name + "</extra>"),
                          row=1, col=k + 1)
            fig.update_xaxes(title_text="gradient-descent step", row=1, col=k + 1)
    # ".0e": every tick as 1e-k; a log axis's default writes 0.1 and 0.01 beside 1e-3
    fig.update_yaxes(type="log", title_text="SAL (nats, log scale)", tickformat=".0e", row=1, col=1)
    fig.update_yaxes(type="log", tickformat=".0e", row=1, col=2)
    return _layout(fig, "Sharpness-Aware Learnability of each weight along its path", "", "")
