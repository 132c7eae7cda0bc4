"""SAL and UD figures (SAL histograms and heatmaps, UD bars over runs and seeds, learnable layers
per epoch) and the training curves of runs.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import ACC_AXIS, PALETTE, SAL_SCALE, _colour, _layout, sal_range


def sal_histogram(sal: dict[str, np.ndarray], threshold: float | None, bins: int = 40,
                  colours: dict[str, str] | None = None, epochs: str = "all epochs") -> go.Figure:
    """Overlaid histograms of every (epoch, layer) SAL value of each run, with the UD threshold;
    `epochs` says which epochs the values come from (in the title)."""
    fig = go.Figure()
    values = [v[np.isfinite(v)].ravel() for v in sal.values()]
    both = np.concatenate(values) if values else np.array([0.0])
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    size = (hi - lo) / bins if hi > lo else 1.0
    for i, (name, v) in enumerate(zip(sal, values)):
        # step outlines, not translucent bars: overlaid fills mix into colours no run has
        counts, edges = np.histogram(v, bins=bins, range=(lo, hi if hi > lo else lo + 1.0))
        fig.add_trace(go.Scatter(x=np.repeat(edges, 2)[1:-1], y=np.repeat(counts, 2), name=name, mode="lines",
                                 line=dict(color=_colour(colours, name, i), width=2, shape="linear"),
                                 hovertemplate=name + "<br>SAL %{x:.3g}<br>%{y} layer-epochs<extra></extra>"))
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", line_color="black",
                      annotation_text=f"UD threshold {threshold:.3g}", annotation_position="top")
    fig.update_xaxes(exponentformat="e")  # plotly's default mixes "0.001" and "100µ" on one axis
    return _layout(fig, f"Per-layer SAL, {epochs}", "SAL (loss change in the ε-ball, nats)", "layer-epochs")


def sal_heatmap(frame: pd.DataFrame, name: str, threshold: float | None = None,
                zrange: tuple[float, float] | None = None) -> go.Figure:
    """Layers × epochs heatmap of one run's SAL (frame: rows = epochs, columns = layers), dark at
    0, bright at high SAL. Panels shown side by side need one `zrange` (see :func:`sal_range`),
    or each gets its own and a run with SAL 0.014 looks as bright as one with 1.4."""
    zmin, zmax = zrange if zrange is not None else sal_range([frame])
    fig = go.Figure(go.Heatmap(z=frame.to_numpy().T, x=frame.index, y=list(frame.columns), colorscale=SAL_SCALE,
                               zmin=zmin, zmax=zmax, colorbar=dict(title="SAL", exponentformat="e"),
                               hovertemplate="epoch %{x}<br>%{y}<br>SAL %{z:.3e}<extra></extra>"))
    title = f"SAL per layer and epoch: {name}" + (f" (threshold {threshold:.3g})" if threshold is not None else "")
    return _layout(fig, title, "epoch", "layer (weight tensor)")


def ud_bars(table: pd.DataFrame, colours: dict[str, str] | None = None) -> go.Figure:
    """UD per run (bars in each run's colour, clean = 1) above the final clean-test accuracy of the
    same runs, in two panels sharing the run axis. Not two y axes on one panel: their ticks line up
    by accident (UD = 1 sat level with 40% accuracy) and read as a relation that is not there."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.6, 0.4])
    runs = list(table["run"])
    marker = [_colour(colours, r, i) for i, r in enumerate(runs)]
    fig.add_trace(go.Bar(x=runs, y=table["UD"], name="UD", marker_color=marker, showlegend=False,
                         hovertemplate="%{x}<br>UD %{y:.3f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=runs, y=table["final_test_acc"], name="final clean-test accuracy", showlegend=False,
                         marker=dict(color="white", line=dict(color=marker, width=2)),
                         hovertemplate="%{x}<br>accuracy %{y:.3f}<extra></extra>"), row=2, col=1)
    fig.add_hline(y=1, line_dash="dot", line_color="grey", row=1, col=1)
    fig.update_yaxes(title_text="UD (clean run = 1)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="final accuracy (fraction)", range=[0, 1], row=2, col=1)
    fig.update_xaxes(title_text="run", row=2, col=1)
    return _layout(fig, "Unlearnable Distance per run, and the accuracy it reaches", "", "", height=560)


def ud_seed_bars(summary: pd.DataFrame, table: pd.DataFrame) -> go.Figure:
    """UD per variant: bars at the mean over seeds with the 95% t interval as error bars, and
    every seed's UD as a dot, so two seeds are not mistaken for a distribution."""
    fig = go.Figure()
    mean, lo, hi = (summary[f"UD_{c}"].to_numpy(dtype=float) for c in ("mean", "lo", "hi"))
    fig.add_trace(go.Bar(x=summary["variant"], y=mean, name="mean over seeds",
                         marker_color=[PALETTE[i % len(PALETTE)] for i in range(len(summary))],
                         error_y=dict(type="data", array=np.nan_to_num(hi - mean), arrayminus=np.nan_to_num(mean - lo),
                                      visible=True),
                         customdata=np.stack([summary["seeds"], lo, hi], axis=1),
                         hovertemplate="%{x}<br>UD %{y:.3f}, 95% interval [%{customdata[1]:.3f}, %{customdata[2]:.3f}]"
                                       " over %{customdata[0]} seeds<extra></extra>"))
    fig.add_trace(go.Scatter(x=table["variant"], y=table["UD"], mode="markers", name="one seed",
                             marker=dict(color="black", size=8, symbol="circle-open"),
                             customdata=table["seed"], hovertemplate="%{x}<br>seed %{customdata}: UD %{y:.3f}"
                                                                     "<extra></extra>"))
    fig.add_hline(y=1, line_dash="dot", line_color="grey")
    fig.update_yaxes(rangemode="tozero")
    return _layout(fig, "Unlearnable Distance over seeds", "run (seed left out)", "UD (its clean twin = 1)",
                   subtitle="each run against the clean run of the same seed and settings; bars: mean, whiskers: "
                            "95% t interval over seeds")


def counts_per_epoch(per_epoch: dict[str, np.ndarray], epochs: dict[str, np.ndarray],
                     colours: dict[str, str] | None = None) -> go.Figure:
    fig = go.Figure()
    for i, (name, counts) in enumerate(per_epoch.items()):
        fig.add_trace(go.Scatter(x=epochs[name], y=counts, mode="lines+markers", name=name,
                                 line=dict(color=_colour(colours, name, i))))
    return _layout(fig, "Learnable layers per epoch", "epoch", "layers above the threshold")


def metrics_figure(metrics: dict[str, pd.DataFrame], colours: dict[str, str] | None = None) -> go.Figure:
    """Accuracy (left) and loss (right) per epoch of each run: solid = the data it trained on,
    dashed = the clean test set; one legend entry per run and split, shared by both panels."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["Accuracy", "Loss"], horizontal_spacing=0.1)
    for i, (name, m) in enumerate(metrics.items()):
        colour = _colour(colours, name, i)
        for split, dash in (("train", None), ("test", "dash")):
            label = f"{name} {'train' if split == 'train' else 'clean test'}"
            for col, column, scale in ((1, f"{split}_acc", 1), (2, f"{split}_loss", 1)):
                fig.add_trace(go.Scatter(x=m["epoch"], y=m[column] * scale, name=label, legendgroup=label,
                                         showlegend=col == 1, line=dict(color=colour, dash=dash)), row=1, col=col)
    fig.update_yaxes(title_text=ACC_AXIS, range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="loss (cross-entropy, nats)", rangemode="tozero", row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    return _layout(fig, "Accuracy and loss per epoch", "", "")
