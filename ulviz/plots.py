"""Every figure of the dashboard: arrays in, plotly figures out. The only module importing plotly.

Each function returns a figure with a title and labelled axes; the pages add a one-line caption
saying how to read it (see :data:`CAPTIONS`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]

CAPTIONS = {
    "line": "Loss (mean cross-entropy, nats) along a direction in weight space; 0 is the trained model. "
            "A flat, wide valley generalizes; a sharp one does not. Batch-norm statistics frozen (eval mode).",
    "contour": "Loss on a plane θ + α·d + β·e around the trained model (the cross at 0, 0), directions "
               "filter-normalized (Li et al. 2018); same colour = same loss on every panel. Eval mode.",
    "surface": "The same plane as a 3-D surface: height and colour are the loss. Drag to rotate.",
    "sal_hist": "How many layer-epochs have each SAL value, per run; layers right of the dashed UD threshold "
                "are learnable. Poisoning that works pushes mass to the left of it.",
    "sal_heatmap": "SAL of every layer (rows) after every epoch (columns): how much one layer's loss can still "
                   "move in a 5% ball around its weights. Bright = still learnable.",
    "paths": "Each run's weights projected on the two principal directions of its path (epochs as dots, "
             "the first one marked); the colour is the loss on that plane around the final weights.",
    "ud": "Unlearnable Distance: learnable layers per epoch relative to the clean run (clean = 1, truly "
          "unlearnable = 0), next to the clean-test accuracy each run reaches.",
    "counts": "Learnable layers (SAL above the threshold) at each epoch, per run.",
    "metrics": "Accuracy per epoch: solid on the data the run trained on (maybe protected), dashed on the clean test set.",
    "divergence": "Relative distance ‖θ_poisoned − θ_clean‖ / ‖θ_clean‖ of each layer (rows) per epoch: "
                  "where the poisoned path leaves the clean one.",
}


def _layout(fig: go.Figure, title: str, x: str, y: str, **kw) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white",
                      margin=dict(l=60, r=20, t=60, b=50), legend=dict(orientation="h", y=-0.2), **kw)
    return fig


def landscape_lines(lands: dict, metric: str = "loss") -> go.Figure:
    """1-D landscapes (line or interpolation) of several runs on one axis."""
    fig = go.Figure()
    for i, (name, land) in enumerate(lands.items()):
        values = land.loss if metric == "loss" else land.acc * 100
        fig.add_trace(go.Scatter(x=land.coords[0], y=values, mode="lines", name=name,
                                 line=dict(color=PALETTE[i % len(PALETTE)], width=2)))
    kind = next(iter(lands.values())).settings.get("kind", "line") if lands else "line"
    x = "α (interpolation: 0 = start, 1 = end)" if kind == "interp" else "α (step along the direction)"
    y = "loss (cross-entropy, nats)" if metric == "loss" else "accuracy (%)"
    return _layout(fig, f"{'Loss' if metric == 'loss' else 'Accuracy'} along a line in weight space", x, y)


def landscape_contours(lands: dict, log_scale: bool = True) -> go.Figure:
    """2-D landscapes side by side on one shared colour scale (log10 of the loss by default)."""
    names = list(lands)
    fig = make_subplots(rows=1, cols=max(len(names), 1), subplot_titles=names, horizontal_spacing=0.08)
    z_all = [_z(lands[n].loss, log_scale) for n in names]
    finite = np.concatenate([z[np.isfinite(z)].ravel() for z in z_all]) if z_all else np.array([0.0])
    zmin, zmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    for i, (name, z) in enumerate(zip(names, z_all)):
        land = lands[name]
        fig.add_trace(go.Contour(x=land.coords[0], y=land.coords[1], z=z.T, coloraxis="coloraxis",
                                 contours=dict(showlabels=False), name=name,
                                 hovertemplate="α %{x:.2f}<br>β %{y:.2f}<br>" + ("log10 loss" if log_scale else "loss")
                                 + " %{z:.3f}<extra></extra>"), row=1, col=i + 1)
        fig.add_trace(go.Scatter(x=[0], y=[0], mode="markers", marker=dict(symbol="x", color="white", size=10,
                                 line=dict(width=1, color="black")), showlegend=False, hoverinfo="skip"), row=1, col=i + 1)
        fig.update_xaxes(title_text="α (direction 1)", row=1, col=i + 1)
        fig.update_yaxes(title_text="β (direction 2)", row=1, col=i + 1)
    fig.update_layout(coloraxis=dict(colorscale="Viridis", cmin=zmin, cmax=zmax,
                                     colorbar=dict(title="log10 loss" if log_scale else "loss")))
    return _layout(fig, "Loss landscape around the trained weights (shared colour scale)", "", "",
                   height=450)


def landscape_surface(land, name: str, log_scale: bool = False) -> go.Figure:
    fig = go.Figure(go.Surface(x=land.coords[0], y=land.coords[1], z=_z(land.loss, log_scale).T,
                               colorscale="Viridis", colorbar=dict(title="log10 loss" if log_scale else "loss")))
    fig.update_layout(title=f"Loss surface: {name}", template="plotly_white", height=550,
                      scene=dict(xaxis_title="α (direction 1)", yaxis_title="β (direction 2)",
                                 zaxis_title="log10 loss" if log_scale else "loss (nats)"),
                      margin=dict(l=0, r=0, t=50, b=0))
    return fig


def _z(loss: np.ndarray, log_scale: bool) -> np.ndarray:
    z = np.asarray(loss, dtype=np.float64)
    return np.log10(np.clip(z, 1e-8, None)) if log_scale else z


def sal_histogram(sal: dict[str, np.ndarray], threshold: float | None, bins: int = 40) -> go.Figure:
    """Overlaid histograms of every (epoch, layer) SAL value of each run, with the UD threshold."""
    fig = go.Figure()
    values = [v[np.isfinite(v)].ravel() for v in sal.values()]
    both = np.concatenate(values) if values else np.array([0.0])
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    size = (hi - lo) / bins if hi > lo else 1.0
    for i, (name, v) in enumerate(zip(sal, values)):
        fig.add_trace(go.Histogram(x=v, name=name, opacity=0.55, marker_color=PALETTE[i % len(PALETTE)],
                                   xbins=dict(start=lo, end=hi + size, size=size)))
    fig.update_layout(barmode="overlay")
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", line_color="black",
                      annotation_text=f"UD threshold {threshold:.3g}", annotation_position="top")
    return _layout(fig, "Per-layer SAL, all epochs", "SAL (loss change in the ε-ball, nats)", "layer-epochs")


def sal_heatmap(frame: pd.DataFrame, name: str, threshold: float | None = None) -> go.Figure:
    """Layers × epochs heatmap of one run's SAL (frame: rows = epochs, columns = layers)."""
    fig = go.Figure(go.Heatmap(z=frame.to_numpy().T, x=frame.index, y=list(frame.columns), colorscale="Magma",
                               colorbar=dict(title="SAL"),
                               hovertemplate="epoch %{x}<br>%{y}<br>SAL %{z:.4f}<extra></extra>"))
    title = f"SAL per layer and epoch: {name}" + (f" (threshold {threshold:.3g})" if threshold is not None else "")
    return _layout(fig, title, "epoch", "layer (weight tensor)")


def path_figure(plane, names: list[str], land=None) -> go.Figure:
    """Runs' paths on a PCA plane, over the loss contour of that plane when given."""
    fig = go.Figure()
    if land is not None:
        fig.add_trace(go.Contour(x=land.coords[0], y=land.coords[1], z=_z(land.loss, True).T, colorscale="Viridis",
                                 opacity=0.75, colorbar=dict(title="log10 loss"), name="loss",
                                 hovertemplate="PC1 %{x:.2f}<br>PC2 %{y:.2f}<br>log10 loss %{z:.3f}<extra></extra>"))
    for i, (name, xy) in enumerate(zip(names, plane.coords)):
        colour = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="lines+markers", name=name,
                                 line=dict(color=colour, width=2), marker=dict(size=6),
                                 text=[f"epoch {e}" for e in range(len(xy))],
                                 hovertemplate="%{text}<br>PC1 %{x:.3f}<br>PC2 %{y:.3f}<extra>" + name + "</extra>"))
        fig.add_trace(go.Scatter(x=xy[:1, 0], y=xy[:1, 1], mode="markers", showlegend=False, hoverinfo="skip",
                                 marker=dict(symbol="star", size=14, color=colour, line=dict(width=1, color="black"))))
    ev = plane.explained
    return _layout(fig, "Optimization paths on the PCA plane",
                   f"PC1 ({ev[0] * 100:.1f}% of the variance)", f"PC2 ({ev[1] * 100:.1f}% of the variance)", height=520)


def ud_bars(table: pd.DataFrame) -> go.Figure:
    """UD per run (bars, clean = 1) and final clean-test accuracy (markers, right axis)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Bar(x=table["run"], y=table["UD"], name="UD", marker_color=PALETTE[0],
                         hovertemplate="%{x}<br>UD %{y:.3f}<extra></extra>"), secondary_y=False)
    fig.add_trace(go.Scatter(x=table["run"], y=table["final_test_acc"] * 100, name="clean-test accuracy",
                             mode="markers", marker=dict(size=12, color=PALETTE[1], symbol="diamond")),
                  secondary_y=True)
    fig.add_hline(y=1, line_dash="dot", line_color="grey")
    fig.update_yaxes(title_text="UD (clean run = 1)", secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title_text="final clean-test accuracy (%)", secondary_y=True, range=[0, 100])
    return _layout(fig, "Unlearnable Distance per run", "run", "")


def counts_per_epoch(per_epoch: dict[str, np.ndarray], epochs: dict[str, np.ndarray]) -> go.Figure:
    fig = go.Figure()
    for i, (name, counts) in enumerate(per_epoch.items()):
        fig.add_trace(go.Scatter(x=epochs[name], y=counts, mode="lines+markers", name=name,
                                 line=dict(color=PALETTE[i % len(PALETTE)])))
    return _layout(fig, "Learnable layers per epoch", "epoch", "layers above the threshold")


def metrics_figure(metrics: dict[str, pd.DataFrame]) -> go.Figure:
    fig = go.Figure()
    for i, (name, m) in enumerate(metrics.items()):
        colour = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=m["epoch"], y=m["train_acc"] * 100, name=f"{name} train", line=dict(color=colour)))
        fig.add_trace(go.Scatter(x=m["epoch"], y=m["test_acc"] * 100, name=f"{name} clean test",
                                 line=dict(color=colour, dash="dash")))
    fig.update_yaxes(range=[0, 100])
    return _layout(fig, "Accuracy per epoch", "epoch", "accuracy (%)")


def divergence_heatmap(table: pd.DataFrame, name: str) -> go.Figure:
    pivot = table.pivot(index="layer", columns="epoch", values="rel_distance")
    pivot = pivot.reindex(list(dict.fromkeys(table["layer"])))
    fig = go.Figure(go.Heatmap(z=pivot.to_numpy(), x=list(pivot.columns), y=list(pivot.index), colorscale="Blues",
                               colorbar=dict(title="relative distance"),
                               hovertemplate="epoch %{x}<br>%{y}<br>distance %{z:.3f}<extra></extra>"))
    return _layout(fig, f"How far {name} departs from the clean run, per layer", "epoch", "layer (weight tensor)")
