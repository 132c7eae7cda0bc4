"""Loss landscapes (lines, contour planes, 3-D surfaces) and optimization paths over their plane,
with the per-layer divergence of two paths.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import ACC_AXIS, _colour, _layout, _scale


def landscape_detail(lands: dict) -> str:
    """What the landscapes are a slice of, from their settings: the one layer a line or plane is
    restricted to, and the two weight states an interpolation joins."""
    settings = [land.settings for land in lands.values()]
    parts = []
    layers = sorted({s.get("layer") for s in settings if s.get("layer")})
    if layers:
        parts.append(f"only layer {', '.join(layers)} moves; the rest of the weights stay fixed")
    interp = [s for s in settings if s.get("kind") == "interp"]
    if interp:
        ends = {"from the clean run's final weights to each run's final weights" if s.get("other") else
                "from the run's initial weights to its final weights" for s in interp}
        parts.append(" / ".join(sorted(ends)) if len(ends) == 1 else
                     "clean run: from its initial to its final weights; others: from the clean run's final "
                     "weights to theirs")
    return "; ".join(parts)


def landscape_lines(lands: dict, metric: str = "loss", colours: dict[str, str] | None = None,
                    subtitle: str | None = None) -> go.Figure:
    """1-D landscapes (line or interpolation) of several runs on one axis. `subtitle`: what the
    slice is (None = :func:`landscape_detail` of the landscapes' settings, "" = nothing)."""
    fig = go.Figure()
    for i, (name, land) in enumerate(lands.items()):
        values = land.loss if metric == "loss" else land.acc
        fig.add_trace(go.Scatter(x=land.coords[0], y=values, mode="lines", name=name,
                                 line=dict(color=_colour(colours, name, i), width=2)))
    kind = next(iter(lands.values())).settings.get("kind", "line") if lands else "line"
    x = "α (interpolation: 0 = start, 1 = end)" if kind == "interp" else "α (step along the direction)"
    y = "loss (cross-entropy, nats)" if metric == "loss" else ACC_AXIS
    what = "between two weight states" if kind == "interp" else "along a line in weight space"
    return _layout(fig, f"{'Loss' if metric == 'loss' else 'Accuracy'} {what}", x, y,
                   subtitle=landscape_detail(lands) if subtitle is None else subtitle)


def landscape_contours(lands: dict, log_scale: bool = True, subtitle: str | None = None) -> go.Figure:
    """2-D landscapes side by side on one shared colour scale (log10 of the loss by default).
    `subtitle`: what the plane is (None = :func:`landscape_detail`, "" = nothing)."""
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
    fig.update_layout(coloraxis=dict(colorscale=_scale("Viridis"), cmin=zmin, cmax=zmax,
                                     colorbar=dict(title="log10 loss" if log_scale else "loss")))
    return _layout(fig, "Loss landscape around the trained weights (shared colour scale)", "", "",
                   subtitle=landscape_detail(lands) if subtitle is None else subtitle, height=450)


def landscape_surface(land, name: str, log_scale: bool = False) -> go.Figure:
    fig = go.Figure(go.Surface(x=land.coords[0], y=land.coords[1], z=_z(land.loss, log_scale).T,
                               colorscale=_scale("Viridis"), colorbar=dict(title="log10 loss" if log_scale else "loss")))
    fig.update_layout(title=f"Loss surface: {name}", template="plotly_white", height=550,
                      scene=dict(xaxis_title="α (direction 1)", yaxis_title="β (direction 2)",
                                 zaxis_title="log10 loss" if log_scale else "loss (nats)"),
                      margin=dict(l=0, r=0, t=50, b=0))
    return fig


def _z(loss: np.ndarray, log_scale: bool) -> np.ndarray:
    z = np.asarray(loss, dtype=np.float64)
    return np.log10(np.clip(z, 1e-8, None)) if log_scale else z


def path_figure(plane, names: list[str], land=None, colours: dict[str, str] | None = None,
                title: str = "Optimization paths on the PCA plane") -> go.Figure:
    """Runs' paths on a PCA plane, over the loss contour of that plane when given."""
    fig = go.Figure()
    if land is not None:
        fig.add_trace(go.Contour(x=land.coords[0], y=land.coords[1], z=_z(land.loss, True).T,
                                 colorscale=_scale("Viridis"),
                                 opacity=0.75, colorbar=dict(title="log10 loss"), name="loss",
                                 hovertemplate="PC1 %{x:.2f}<br>PC2 %{y:.2f}<br>log10 loss %{z:.3f}<extra></extra>"))
    for i, (name, xy) in enumerate(zip(names, plane.coords)):
        colour = _colour(colours, name, i)
        fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="lines+markers", name=name,
                                 line=dict(color=colour, width=2), marker=dict(size=6),
                                 text=[f"epoch {e}" for e in range(len(xy))],
                                 hovertemplate="%{text}<br>PC1 %{x:.3f}<br>PC2 %{y:.3f}<extra>" + name + "</extra>"))
        fig.add_trace(go.Scatter(x=xy[:1, 0], y=xy[:1, 1], mode="markers", showlegend=False, hoverinfo="skip",
                                 marker=dict(symbol="star", size=14, color=colour, line=dict(width=1, color="black"))))
    ev = plane.explained
    return _layout(fig, title,
                   f"PC1 ({ev[0] * 100:.1f}% of the variance)", f"PC2 ({ev[1] * 100:.1f}% of the variance)", height=520)


def divergence_heatmap(table: pd.DataFrame, name: str, reference: str = "the clean run") -> go.Figure:
    """Relative distance per layer (rows) and epoch of run `name` from the run `reference`."""
    pivot = table.pivot(index="layer", columns="epoch", values="rel_distance")
    pivot = pivot.reindex(list(dict.fromkeys(table["layer"])))
    fig = go.Figure(go.Heatmap(z=pivot.to_numpy(), x=list(pivot.columns), y=list(pivot.index),
                               colorscale=_scale("Blues"), colorbar=dict(title="relative distance"),
                               hovertemplate="epoch %{x}<br>%{y}<br>distance %{z:.3f}<extra></extra>"))
    return _layout(fig, f"How far {name} departs from {reference}, per layer", "epoch", "layer (weight tensor)")
