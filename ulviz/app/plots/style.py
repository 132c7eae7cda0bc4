"""What every figure shares: the palettes and colour scales (as explicit rgb stops), run colours,
the SAL colour range, the one-line captions the pages put under each figure, and the common layout.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import plotly.colors
import plotly.graph_objects as go


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


# Colours of runs: PALETTE's nine, then eleven more from plotly's Dark24 and Light24, worn only
# once the nine are taken (they are kin of the nine); past twenty, hues spaced by the golden angle.
# (no second blue: "#3182bd" sat beside the clean run's "#1f77b4" and read as the same run)
RUN_PALETTE = PALETTE + ["#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#e7ba52", "#e6550d",
                         "#31a354", "#756bb1", "#636363"]


def run_colours(runs: Iterable) -> dict[str, str]:
    """label -> colour for runs given as labels or as (label, identity, is_clean) in order of age.

    A run's colour derives from its identity (the dashboard passes the file's creation stamp and
    path): it takes the PALETTE colour its identity hashes to (clean runs prefer the first, blue),
    or the next one no older run holds; only when PALETTE's nine are all taken, the next free of
    RUN_PALETTE's eleven extras. So adding or renaming a run never recolours the others, and the
    runs of one study keep distinct colours (up to twenty from the palette, then golden-angle
    hues). Why the nine first: the extras are darker or lighter kin of them (a second brown, a
    second purple), and hashing into all twenty drew the demo's em, ops and tap in three browns."""
    import hashlib
    import colorsys

    taken, out = set(), {}
    for item in runs:
        label, identity, clean = (item, item, False) if isinstance(item, str) else item
        if label in out:
            continue
        start = 0 if clean else int(hashlib.sha256(str(identity).encode()).hexdigest(), 16) % len(PALETTE)
        order = [PALETTE[(start + k) % len(PALETTE)] for k in range(len(PALETTE))] + RUN_PALETTE[len(PALETTE):]
        colour = next((c for c in order if c not in taken), None)
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

CAPTIONS.update({
    "atlas_heatmap": "One measure for every layer (rows) at every computed epoch (columns); both runs on one "
                     "colour range, so equal colours mean equal values. Compare with the SAL heatmap of the same run.",
    "atlas_rho": "Spearman rank correlation of each measure with SAL over the (epoch, layer) cells both have, per "
                 "run: +1 = the measure orders layers exactly as SAL does, 0 = unrelated, -1 = reversed.",
    "surgery_blocks": "Clean-test accuracy of the protected model after taking one block's layers (with their "
                      "batch-norms) from the clean run at the same epoch; the lines are the two runs untouched.",
})
