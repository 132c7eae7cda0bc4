"""The studies' figures: the cross-task grid, linear-probe bars, protection x defense tables, and runs
compared in groups (bars with intervals, curve bands, a sweep's parallel coordinates).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go

from .style import ACC_AXIS, PALETTE, _layout, _scale


CROSSTASK_SCALE = _scale("RdYlGn")  # red = the task is lost on protected data, green = as learnable as clean


def crosstask_heatmap(table: pd.DataFrame) -> go.Figure:
    """Method (rows) x task (columns) of the score's ratio to the clean run of that task, the
    ratio and the score itself written on each cell."""
    pivot = table.pivot_table(index="label", columns="task", values="ratio", aggfunc="first")
    scores = table.pivot_table(index="label", columns="task", values="score", aggfunc="first")
    rows = sorted(pivot.index, key=lambda r: (r != "clean", r))
    pivot, scores = pivot.reindex(rows), scores.reindex(rows)
    text = [[("" if np.isnan(r) else f"{r:.2f}<br>({s:.2f})") for r, s in zip(rr, ss)]
            for rr, ss in zip(pivot.to_numpy(), scores.reindex(columns=pivot.columns).to_numpy())]
    fig = go.Figure(go.Heatmap(z=pivot.to_numpy(), x=list(pivot.columns), y=rows, zmin=0, zmax=1.2,
                               colorscale=CROSSTASK_SCALE, text=text, texttemplate="%{text}",
                               colorbar=dict(title="ratio to clean"),
                               hovertemplate="%{y} · %{x}<br>ratio %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "Clean-test score relative to clean training of the same task", "task", "protection",
                   height=max(300, 45 * len(rows) + 120))


def probe_bars(table: pd.DataFrame, colours: dict[str, str] | None = None) -> go.Figure:
    """Linear-probe accuracy (class information in the features) per protection, one bar per task."""
    fig = go.Figure()
    for i, (task, group) in enumerate(table.groupby("task", sort=False)):
        group = group.sort_values("label", key=lambda c: c.map(lambda r: (r != "clean", r)))
        fig.add_trace(go.Bar(x=group["label"], y=group["probe"], name=task,
                             marker_color=PALETTE[i % len(PALETTE)],
                             hovertemplate="%{x} · " + task + "<br>probe %{y:.3f}<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1])
    return _layout(fig, "Linear probe: clean-test accuracy of a logistic head on the frozen features",
                   "protection", "probe accuracy (fraction correct)")




def defense_heatmap(values: pd.DataFrame, kind: str, ratios: pd.DataFrame | None = None) -> go.Figure:
    """Method (rows) x defense (columns) with the value on every cell: `kind` "accuracy" (coloured
    by the ratio to clean training under the same defense, the ratio in brackets) or "UD"."""
    rows, cols = [str(r) for r in values.index], [str(c) for c in values.columns]
    v = values.to_numpy(dtype=float)
    if kind == "accuracy":
        z = ratios.reindex(index=values.index, columns=values.columns).to_numpy(dtype=float)
        text = [["" if np.isnan(a) else (f"{a:.2f}" if np.isnan(r) else f"{a:.2f}<br>({r:.2f})")
                 for a, r in zip(ra, rr)] for ra, rr in zip(v, z)]
        heat = dict(z=z, zmin=0, zmax=1.2, colorscale=CROSSTASK_SCALE, colorbar=dict(title="ratio to clean"),
                    hovertemplate="%{y} · %{x}<br>accuracy %{text}<extra></extra>")
        title = "Clean-test accuracy under each defense"
    else:
        text = [["" if np.isnan(u) else f"{u:.2f}" for u in row] for row in v]
        # diverging around 1 (as many learnable layers as clean training): below 1 fewer learnable
        # layers (towards unlearnable), above 1 more; symmetric in log, so 0.5 and 2 are equally far
        top = max(2.0, float(np.nanmax(v)) if np.isfinite(v).any() else 2.0)
        heat = dict(z=np.log2(np.clip(v, 1 / top, top)), zmin=-np.log2(top), zmax=np.log2(top), colorscale="RdBu",
                    colorbar=dict(title="UD", tickvals=[-np.log2(top), -1, 0, 1, np.log2(top)],
                                  ticktext=[f"{1 / top:.2g}", "0.5", "1", "2", f"{top:.2g}"]),
                    customdata=v, hovertemplate="%{y} · %{x}<br>UD %{customdata:.3f}<extra></extra>")
        title = "Unlearnable Distance under each defense"
    fig = go.Figure(go.Heatmap(x=cols, y=rows, text=text, texttemplate="%{text}", **heat))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, "defense", "protection", height=max(300, 55 * len(rows) + 150),
                   subtitle="against the clean run trained under the same defense")


def defense_layers(fractions: pd.DataFrame, method: str) -> go.Figure:
    """Per-layer learnable fraction of one protection's run, one bar group per layer, one colour
    per defense column of `fractions` (layer -> fraction; "none" = trained without defense)."""
    fig = go.Figure()
    for i, defense in enumerate(fractions.columns):
        fig.add_trace(go.Bar(x=list(fractions.index), y=fractions[defense].to_numpy(dtype=float) * 100,
                             name=f"{method} · {defense}", marker_color=PALETTE[i % len(PALETTE)],
                             hovertemplate="%{x}<br>learnable in %{y:.0f}% of SAL epochs<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 105])
    fig.update_xaxes(tickangle=-40, automargin=True)  # a ResNet's 21 layer names side by side overlap
    return _layout(fig, f"Which layers {method} leaves learnable, without and with the defense", "layer",
                   "learnable epochs (%)", subtitle="a layer is learnable in an epoch when its SAL is above the "
                   "threshold of the clean run trained the same way")


# -- comparing runs: groups with intervals, a sweep's grid -----------------------------------------

def group_bars(summary: pd.DataFrame, metric: str, label: str, bounds: tuple[float, float] | None = None) -> go.Figure:
    """One bar per group at the mean of `metric` with its 95% t interval as whiskers; `summary`
    from :func:`ulviz.measure.compare.group_summary` (group, n, <metric>_mean/_lo/_hi). `bounds`: the
    metric's possible range (accuracy: 0 to 1), the axis's range: a t interval over two runs can
    reach past it, and an axis down to -0.5 accuracy reads as if such values were possible."""
    mean, lo, hi = (summary[f"{metric}_{c}"].to_numpy(dtype=float) for c in ("mean", "lo", "hi"))
    fig = go.Figure(go.Bar(
        x=summary["group"], y=mean, marker_color=[PALETTE[i % len(PALETTE)] for i in range(len(summary))],
        error_y=dict(type="data", array=np.nan_to_num(hi - mean), arrayminus=np.nan_to_num(mean - lo), visible=True),
        customdata=np.stack([summary["n"], lo, hi], axis=1),
        hovertemplate="%{x}<br>" + label + " %{y:.3f}, 95% interval [%{customdata[1]:.3f}, %{customdata[2]:.3f}]"
                      " over %{customdata[0]} runs<extra></extra>"))
    fig.update_xaxes(tickangle=-30, automargin=True)
    if bounds is not None:
        fig.update_yaxes(range=list(bounds))
    return _layout(fig, f"{label[0].upper()}{label[1:]} per group", "group", label, subtitle="bars: mean over the group's runs; "
                   "whiskers: 95% t interval (none for a group of one run)")


def group_bands(bands: dict[str, pd.DataFrame], label: str = ACC_AXIS) -> go.Figure:
    """Per group a line at the mean over its runs, epoch by epoch, in a band of the 95% t interval
    (bands: group -> epoch, n, mean, lo, hi from :func:`ulviz.measure.compare.curve_band`)."""
    fig = go.Figure()
    for i, (group, band) in enumerate(bands.items()):
        colour = PALETTE[i % len(PALETTE)]
        r, g, b = plotly.colors.hex_to_rgb(colour)
        fig.add_trace(go.Scatter(x=list(band["epoch"]) + list(band["epoch"])[::-1],
                                 y=list(band["hi"]) + list(band["lo"])[::-1], fill="toself", mode="lines",
                                 line=dict(width=0), fillcolor=f"rgba({r}, {g}, {b}, 0.18)", hoverinfo="skip",
                                 legendgroup=group, showlegend=False, name=f"{group} 95% interval"))
        fig.add_trace(go.Scatter(x=band["epoch"], y=band["mean"], mode="lines", name=group, legendgroup=group,
                                 line=dict(color=colour, width=2), customdata=band[["n", "lo", "hi"]].to_numpy(),
                                 hovertemplate="epoch %{x}<br>mean %{y:.3f} [%{customdata[1]:.3f}, "
                                               "%{customdata[2]:.3f}] over %{customdata[0]} runs<extra>"
                                               + group + "</extra>"))
    fig.update_yaxes(range=[0, 1.02])
    return _layout(fig, "Clean-test accuracy per epoch, mean over each group", "epoch", label,
                   subtitle="line: mean over the group's runs; band: 95% t interval (none for one run)")


def parallel_coordinates(frame: pd.DataFrame, fields: list[str], colour_by: str) -> go.Figure:
    """A sweep's runs as lines across its axes (`fields`: categorical axes get their values as
    ticks) and results, coloured by the numeric column `colour_by`."""
    dims = []
    for f in fields:
        col = frame[f]
        numeric = pd.to_numeric(col, errors="coerce")
        if numeric.notna().all() and col.map(lambda v: not isinstance(v, bool)).all():
            dims.append(dict(label=f, values=numeric.to_numpy(dtype=float)))
        else:
            values = sorted(col.astype(str).unique())
            dims.append(dict(label=f, values=col.astype(str).map(values.index).to_numpy(dtype=float),
                             tickvals=list(range(len(values))), ticktext=values))
    colour = pd.to_numeric(frame[colour_by], errors="coerce").to_numpy(dtype=float)
    fig = go.Figure(go.Parcoords(dimensions=dims, line=dict(color=np.nan_to_num(colour, nan=0.0),
                                                          colorscale=_scale("Viridis"), showscale=True,
                                                          colorbar=dict(title=colour_by))))
    fig = _layout(fig, "The runs across their config fields and results", "", "", height=460)
    return fig.update_layout(margin=dict(l=80, r=80, t=100, b=40))  # room for the axis labels above the axes
