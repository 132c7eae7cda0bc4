"""SAL: per-layer Sharpness-Aware Learnability, clean vs protected, with the UD threshold."""
import pandas as pd
import streamlit as st

from ulviz import plots, ui
from ulviz.ud import unlearnable_distance

ui.page("Sharpness-Aware Learnability per layer",
        "SAL of a layer: how far its loss can still move (up or down) when only that layer's weights move "
        "within 5% of their norm. A layer with a high SAL is still learning; poisoning that works "
        "flattens it.")

runs = ui.runs_or_stop(need_sal=True, message="No run file with SAL here. Compute it with `ulviz sal RUN.h5` "
                                              "or train with `--sal exact`.")
clean = ui.clean_name(runs)
chosen = ui.pick_runs(runs, "Runs", 3, key="sal_runs")
if not chosen:
    st.info("Choose at least one run in the sidebar.")
    st.stop()
first = runs[chosen[0]]
epochs = [int(e) for e in first.sal_epochs]
lo, hi = st.sidebar.select_slider("Epochs", options=epochs, value=(epochs[0], epochs[-1])) if len(epochs) > 1 \
    else (epochs[0], epochs[0])

result = None
if clean is not None:
    same = {n: runs[n].sal["sal"] for n in chosen if runs[n].layer_names == runs[clean].layer_names}
    result = ui.guard(unlearnable_distance, runs[clean].sal["sal"], same)
    for w in (result.warnings if result else []):
        st.warning(w)
else:
    st.warning("No clean run with SAL in this directory: no UD threshold to draw.")


def window(run):
    keep = (run.sal_epochs >= lo) & (run.sal_epochs <= hi)
    return run.sal["sal"][keep]


st.plotly_chart(plots.sal_histogram({n: window(runs[n]) for n in chosen}, result.threshold if result else None),
                width="stretch")
st.caption(plots.CAPTIONS["sal_hist"] + f" Epochs {lo}–{hi}.")

cols = st.columns(min(len(chosen), 2))
for i, name in enumerate(chosen):
    with cols[i % len(cols)]:
        st.plotly_chart(plots.sal_heatmap(runs[name].sal_frame(), name, result.threshold if result else None),
                        width="stretch")
        st.caption(plots.CAPTIONS["sal_heatmap"])

if result is not None:
    st.subheader("Which layers stay learnable")
    table = pd.DataFrame({n: result.per_layer[n] for n in result.per_layer}, index=runs[clean].layer_names)
    st.dataframe(table.style.format("{:.0%}"), width="stretch")
    st.caption("Fraction of epochs in which each layer's SAL is above the clean run's threshold.")
