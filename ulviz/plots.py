"""Every figure of the dashboard: arrays in, plotly figures out. The only module importing plotly.

Each function returns a figure with a title and labelled axes; the pages add a one-line caption
saying how to read it (see :data:`CAPTIONS`).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


def _scale(name: str) -> list[list]:
    """A named plotly colour scale as explicit ``rgb(r, g, b)`` stops. Streamlit's chart theme
    swaps the colours "#000001".."#000040" in a figure's JSON for its own palette (they are its
    template's placeholders), and Magma and Inferno start at "#000004": their darkest stop came
    out light pink. rgb() strings are never swapped, whatever the theme."""
    return [[float(at), "rgb({}, {}, {})".format(*plotly.colors.hex_to_rgb(c)) if c.startswith("#") else c]
            for at, c in plotly.colors.get_colorscale(name)]


# Accuracy is a fraction (0..1) everywhere, in figures as in tables: one unit, no "84.4%" beside "0.841"
ACC_AXIS = "accuracy (fraction correct)"

SAL_SCALE = _scale("Magma")  # dark = SAL near 0 (nothing left to learn), bright = high SAL (learnable)


# Colours of runs: PALETTE's nine, then eleven more from plotly's Dark24 and Light24 that stay
# apart from them on a white page; past twenty, hues spaced by the golden angle.
# (no second blue: "#3182bd" sat beside the clean run's "#1f77b4" and read as the same run)
RUN_PALETTE = PALETTE + ["#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#e7ba52", "#e6550d",
                         "#31a354", "#756bb1", "#636363"]


def run_colours(runs: Iterable) -> dict[str, str]:
    """label -> colour for runs given as labels or as (label, identity, is_clean) in order of age.

    A run's colour derives from its identity (the dashboard passes the file's creation stamp and
    path): it takes the RUN_PALETTE colour its identity hashes to (clean runs prefer the first,
    blue), or the next one no older run holds. So adding or renaming a run never recolours the
    others, and the runs of one study keep distinct colours (up to twenty from the palette, then
    golden-angle hues)."""
    import hashlib
    import colorsys

    taken, out = set(), {}
    for item in runs:
        label, identity, clean = (item, item, False) if isinstance(item, str) else item
        if label in out:
            continue
        start = 0 if clean else int(hashlib.sha256(str(identity).encode()).hexdigest(), 16) % len(RUN_PALETTE)
        free = [RUN_PALETTE[(start + k) % len(RUN_PALETTE)] for k in range(len(RUN_PALETTE))]
        colour = next((c for c in free if c not in taken), None)
        if colour is None:  # past the palette: hues spaced by the golden angle, darkish for white pages
            r, g, b = colorsys.hls_to_rgb((len(taken) * 0.618034) % 1.0, 0.42, 0.65)
            colour = f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"
        taken.add(colour)
        out[label] = colour
    return out


def _colour(colours: dict[str, str] | None, name: str, i: int) -> str:
    # a run missing from the mapping (or no mapping) falls back to the figure's own order
    return (colours or {}).get(name, PALETTE[i % len(PALETTE)])


def sal_range(values: Iterable) -> tuple[float, float]:
    """One colour range for SAL heatmaps drawn side by side: from min(0, lowest) to the highest
    finite value over all of `values` (arrays or DataFrames), so equal colours mean equal SAL on
    every panel and 0 is the darkest colour."""
    finite = [v[np.isfinite(v)] for v in (np.asarray(x, dtype=np.float64) for x in values)]
    finite = np.concatenate([v.ravel() for v in finite]) if finite else np.array([])
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = min(0.0, float(finite.min())), float(finite.max())
    return lo, hi if hi > lo else lo + 1.0


CAPTIONS = {
    "line": "Loss (mean cross-entropy, nats) along a direction in weight space; 0 is the trained model. "
            "A flat, wide valley generalizes; a sharp one does not. Batch-norm statistics frozen (eval mode).",
    "interp": "Loss (mean cross-entropy, nats) on the straight line between two weight states: α = 0 is the "
              "start, α = 1 the end, outside [0, 1] the line is extended. The title says which states: each "
              "run's initial and final weights, or the clean run's final weights and each run's. A bump "
              "between 0 and 1 is a barrier between the two. Batch-norm statistics frozen (eval mode).",
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
          "unlearnable = 0), top; below, on its own axis, the clean-test accuracy each run reaches at its last "
          "epoch (a fraction: two panels, not two scales on one, so no tick of one lines up with the other's).",
    "counts": "Learnable layers (SAL above the threshold) at each epoch, per run.",
    "metrics": "Accuracy (left, fraction correct) and loss (right) per epoch: solid on the data the run trained on (maybe "
               "protected), dashed on the clean test set. Epoch 0 is the untrained model.",
    "divergence": "Relative distance ‖θ_poisoned − θ_clean‖ / ‖θ_clean‖ of each layer (rows) per epoch: "
                  "where the poisoned path leaves the clean one.",
}


def _layout(fig: go.Figure, title: str, x: str, y: str, subtitle: str = "", **kw) -> go.Figure:
    """Title, theme, margins and legend. Axis titles only when given: figures with subplots set
    each axis's title themselves, and an empty x/y here would wipe the first subplot's."""
    if x:
        fig.update_layout(xaxis_title=x)
    if y:
        fig.update_layout(yaxis_title=y)
    text = title + (f"<br><sup>{subtitle}</sup>" if subtitle else "")
    fig.update_layout(title=text, template="plotly_white", legend=dict(orientation="h", y=-0.2),
                      margin=dict(l=60, r=20, t=80 if subtitle else 60, b=50), **kw)
    return fig


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


def divergence_heatmap(table: pd.DataFrame, name: str, reference: str = "the clean run") -> go.Figure:
    """Relative distance per layer (rows) and epoch of run `name` from the run `reference`."""
    pivot = table.pivot(index="layer", columns="epoch", values="rel_distance")
    pivot = pivot.reindex(list(dict.fromkeys(table["layer"])))
    fig = go.Figure(go.Heatmap(z=pivot.to_numpy(), x=list(pivot.columns), y=list(pivot.index),
                               colorscale=_scale("Blues"), colorbar=dict(title="relative distance"),
                               hovertemplate="epoch %{x}<br>%{y}<br>distance %{z:.3f}<extra></extra>"))
    return _layout(fig, f"How far {name} departs from {reference}, per layer", "epoch", "layer (weight tensor)")


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


# -- the sharpness atlas and layer surgery ---------------------------------------------------

ATLAS_SCALE = _scale("Viridis")  # one sequential scale for every sharpness measure (signed ones included)

CAPTIONS.update({
    "atlas_heatmap": "One measure for every layer (rows) at every computed epoch (columns); both runs on one "
                     "colour range, so equal colours mean equal values. Compare with the SAL heatmap of the same run.",
    "atlas_rho": "Spearman rank correlation of each measure with SAL over the (epoch, layer) cells both have, per "
                 "run: +1 = the measure orders layers exactly as SAL does, 0 = unrelated, -1 = reversed.",
    "surgery_blocks": "Clean-test accuracy of the protected model after taking one block's layers (with their "
                      "batch-norms) from the clean run at the same epoch; the lines are the two runs untouched.",
})


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


# -- comparing runs: groups with intervals, a sweep's grid -----------------------------------------

def group_bars(summary: pd.DataFrame, metric: str, label: str, bounds: tuple[float, float] | None = None) -> go.Figure:
    """One bar per group at the mean of `metric` with its 95% t interval as whiskers; `summary`
    from :func:`ulviz.compare.group_summary` (group, n, <metric>_mean/_lo/_hi). `bounds`: the
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
    (bands: group -> epoch, n, mean, lo, hi from :func:`ulviz.compare.curve_band`)."""
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


# -- what a protection looks like ---------------------------------------------------------------

def _rgb(images: np.ndarray) -> np.ndarray:
    """N x C x H x W in [0, 1] -> N x H x W x 3 uint8 (one channel repeated)."""
    x = np.clip(np.asarray(images, dtype=np.float64), 0, 1)
    x = np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x[:, :3]
    return (x.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


def perturbation_gallery(rows: dict[str, np.ndarray], labels: list[str], title: str) -> go.Figure:
    """A grid of images: one row per entry of `rows` (name -> N x C x H x W in [0, 1]), one
    column per image, columns titled by `labels`."""
    names = list(rows)
    n = len(labels)
    fig = make_subplots(rows=len(names), cols=n, column_titles=labels, row_titles=names,
                        horizontal_spacing=0.01, vertical_spacing=0.03)
    for r, name in enumerate(names):
        for c, img in enumerate(_rgb(rows[name])):
            fig.add_trace(go.Image(z=img, hoverinfo="skip"), row=r + 1, col=c + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=11)
    fig = _layout(fig, title, "", "", height=75 * len(names) + 110)
    return fig.update_layout(margin=dict(l=20, r=110, t=90, b=10))


def spectrum_heatmaps(spectra: dict[str, np.ndarray]) -> go.Figure:
    """The mean amplitude spectrum of each run's perturbation (log10, centred: low frequencies in
    the middle), side by side, each on its own colour range (the shape is what compares)."""
    names = list(spectra)
    fig = make_subplots(rows=1, cols=max(len(names), 1), subplot_titles=names, horizontal_spacing=0.04)
    for i, name in enumerate(names):
        s = np.asarray(spectra[name], dtype=float)
        h, w = s.shape
        fy, fx = np.fft.fftshift(np.fft.fftfreq(h)), np.fft.fftshift(np.fft.fftfreq(w))
        fig.add_trace(go.Heatmap(z=np.log10(np.clip(s, 1e-12, None)), x=fx, y=fy, colorscale=_scale("Viridis"),
                                 showscale=False, name=name,
                                 hovertemplate="fx %{x:.2f}<br>fy %{y:.2f}<br>log10 amplitude %{z:.2f}<extra>"
                                               + name + "</extra>"), row=1, col=i + 1)
        fig.update_xaxes(title_text="fx (cycles/px)", row=1, col=i + 1)
        fig.update_yaxes(scaleanchor="x" if i == 0 else f"x{i + 1}", row=1, col=i + 1)
    fig.update_yaxes(title_text="fy (cycles/px)", row=1, col=1)
    return _layout(fig, "Amplitude spectrum of the perturbation (log10, centre = low frequencies)", "", "",
                   height=360)


def radial_spectrum(profiles: dict[str, tuple[np.ndarray, np.ndarray]], colours: dict[str, str] | None = None,
                    cutoff: float | None = None) -> go.Figure:
    """Mean amplitude in rings of frequency (name -> (radius as a fraction of Nyquist, amplitude)),
    one line per run, log y; the low/high split drawn at `cutoff`."""
    fig = go.Figure()
    for i, (name, (r, a)) in enumerate(profiles.items()):
        fig.add_trace(go.Scatter(x=r, y=a, mode="lines+markers", name=name,
                                 line=dict(color=_colour(colours, name, i), width=2)))
    if cutoff is not None:
        fig.add_vline(x=cutoff, line_dash="dash", line_color="grey", annotation_text="low | high")
    fig.update_yaxes(type="log", tickformat=".0e")
    return _layout(fig, "Perturbation amplitude by frequency", "frequency (fraction of Nyquist)",
                   "mean amplitude (log scale)")
