"""SAL: per-layer Sharpness-Aware Learnability, clean vs protected, with the UD threshold."""
import pandas as pd
import streamlit as st

from ulviz.app import plots, ui
from ulviz.measure.ud import learnable_counts, unlearnable_distance

ui.page("Sharpness-Aware Learnability per layer",
        "SAL of a layer: how far its loss can still move (up or down) when only that layer's weights move "
        "within 5% of their norm. A layer with a high SAL is still learning; poisoning that works "
        "flattens it.")

runs = ui.runs_or_stop(need_sal=True, message="No run file with SAL here. Compute it with `ulviz sal RUN.h5` "
                                              "or train with `--sal exact` (or `fast`).")
colours = ui.colours()
clean = ui.clean_name(runs)
chosen = ui.pick_runs(runs, "Runs", 3, key="sal_runs")
if not chosen:
    st.info("Choose at least one run in the sidebar.")
    st.stop()
ui.warn_incomparable(runs, chosen)
epochs = sorted({int(e) for n in chosen for e in runs[n].sal_epochs})
lo, hi = st.sidebar.select_slider("Epochs", options=epochs, value=(epochs[0], epochs[-1])) if len(epochs) > 1 \
    else (epochs[0], epochs[0])
span = ui.describe_epochs([e for e in epochs if lo <= e <= hi])


def window(run) -> pd.DataFrame:
    """The run's SAL (rows = epochs, columns = layers) in the chosen epochs."""
    frame = run.sal_frame()
    return frame[(frame.index >= lo) & (frame.index <= hi)]


frames = {n: window(runs[n]) for n in chosen}
result = None
if clean is not None:  # the threshold comes from all of the clean run's epochs, as UD defines it
    same = {n: runs[n].sal["sal"] for n in chosen if runs[n].layer_names == runs[clean].layer_names}
    result = ui.guard(unlearnable_distance, runs[clean].sal["sal"], same)
    ui.show_warnings(result.warnings if result else [])
else:
    st.warning("No clean run with SAL in this directory: no UD threshold to draw.")
threshold = result.threshold if result else None

empty = [n for n in chosen if frames[n].empty]
if empty:
    st.info(f"No SAL in {span} for {', '.join(empty)} (its SAL epochs: "
            + "; ".join(f"{n}: {ui.describe_epochs(runs[n].sal_epochs)}" for n in empty)
            + "). Widen the epoch window, or compute SAL there with `ulviz sal RUN.h5 --epochs ...`.")
with_values = {n: f for n, f in frames.items() if not f.empty}
if not with_values:
    st.stop()
ui.chart(plots.sal_histogram({n: f.to_numpy() for n, f in with_values.items()}, threshold, colours=colours, epochs=span),
         "sal-histogram", caption=plots.CAPTIONS["sal_hist"] + f" Values from {span}. "
         + ui.sal_summary({n: runs[n] for n in with_values}))

zrange = plots.sal_range(with_values.values())  # one colour range for every panel
cols = st.columns(min(len(with_values), 2))
for i, name in enumerate(with_values):  # a run with no SAL here has its message above, not empty axes
    with cols[i % len(cols)]:
        ui.chart(plots.sal_heatmap(frames[name], name, threshold, zrange), f"sal-heatmap-{name}",
                 caption=plots.CAPTIONS["sal_heatmap"] + f" Same colour range on every panel ({zrange[0]:.3e} to "
                 f"{zrange[1]:.3e}).")

if result is not None:
    st.subheader("Which layers stay learnable")
    counts = {n: ui.guard(learnable_counts, frames[n].to_numpy(), threshold, n)
              for n in result.per_layer if len(frames[n])}
    table = pd.DataFrame({n: c[2] for n, c in counts.items() if c is not None}, index=runs[clean].layer_names)
    st.dataframe(table.style.format("{:.0%}"), width="stretch")
    st.caption(f"Fraction of the {span} in which each layer's SAL is above the UD threshold {threshold:.4g} "
               "(set from all of the clean run's epochs).")
