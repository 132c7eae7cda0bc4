"""Sharpness atlas: is SAL just curvature? Per-layer Hessian, adaptive sharpness and norms beside SAL."""
from functools import partial

import pandas as pd
import streamlit as st

from ulviz.app import plots, ui
from ulviz.measure.sharpness import (DATA_MEASURES, LABELS, SharpnessConfig, atlas_frames, compute_run_sharpness,
                                     default_epochs, sal_correlations, sharpest_layers, weight_measures)
from ulviz.store.analyses import read_sharpness

ui.page("Sharpness atlas",
        "For every layer, next to its SAL: the top eigenvalue and the trace of the Hessian of the loss with respect "
        "to that layer alone, the adaptive sharpness (the worst loss increase when each weight moves by at most "
        "rho times its own size, ASAM's definition), the weight norm and the distance from the initial weights. "
        "Where a measure ranks layers as SAL does, SAL reads as curvature; where it does not, SAL sees something "
        "else. Compute it with `ulviz sharpness RUN.h5`.")

runs = ui.runs_or_stop()
names = ui.clean_first(runs)
clean = ui.clean_name(runs)
left = st.sidebar.selectbox("Clean run", names, index=names.index(clean) if clean else 0, key="atlas_clean")
others = [n for n in names if n != left] or names
right = st.sidebar.selectbox("Protected run", others, key="atlas_protected")
chosen = list(dict.fromkeys([left, right]))
QUICK = SharpnessConfig(subset=128, power_iters=10, probes=4)  # what the button computes: one epoch, seconds


@st.cache_data(show_spinner=False, max_entries=64)
def stored(path: str, stamp: tuple) -> dict:
    """What the run file holds, the data-free measures filled in from its snapshots where missing."""
    return {**weight_measures(ui.load_run(path)), **read_sharpness(path)}


sharp = {}
for name in chosen:
    run = runs[name]
    sharp[name] = ui.guard(stored, str(run.path), (run.path.stat().st_size, run.path.stat().st_mtime_ns)) or {}
    if not any(m in sharp[name] for m in DATA_MEASURES):
        last = run.epochs_done
        st.info(f"Only the weight norms are shown for {name}: no Hessian or adaptive sharpness stored yet. Compute it with `ulviz sharpness {run.path}` (at the epochs "
                f"with SAL: {', '.join(map(str, default_epochs(run)))}), or here for its last epoch with few samples "
                f"({QUICK.subset}).")
        if last >= 1 and st.button(f"Compute for {name}, epoch {last}", key=f"atlas_go_{name}"):
            with st.spinner(f"computing the atlas of {name} at epoch {last}"):
                ui.act(partial(compute_run_sharpness, epochs=[last]), run.path, QUICK, done=f"Sharpness of {name} stored.")
ready = [n for n in chosen if sharp[n]]
if not ready:
    st.stop()

frames = {n: atlas_frames(sharp[n], sharp[n][next(iter(sharp[n]))]["layers"]) for n in ready}
measures = [m for m in LABELS if any(m in frames[n] for n in ready)]
colours = ui.colours()
for m in measures:
    st.subheader(LABELS[m])
    have = [n for n in ready if m in frames[n]]
    zrange = plots.shared_range([frames[n][m] for n in have])  # one colour range per measure
    cols = st.columns(len(have))
    for col, n in zip(cols, have):
        with col:
            ui.chart(plots.measure_heatmap(frames[n][m], n, LABELS[m], zrange), f"atlas-{m}-{n}")
    st.caption(plots.CAPTIONS["atlas_heatmap"] + f" Range {zrange[0]:.4g} to {zrange[1]:.4g}.")

with_sal = [n for n in ready if len(runs[n].sal_epochs)]
if not with_sal:
    st.info("Neither run has SAL, so there is nothing to correlate with: `ulviz sal RUN.h5 --epochs ...`.")
    st.stop()
table = pd.concat([sal_correlations(frames[n], runs[n].sal_frame()).assign(run=n) for n in with_sal])
st.subheader("Does a measure rank layers as SAL does?")
ui.chart(plots.correlation_bars(table, colours), "atlas-correlation", data=table)
st.caption(plots.CAPTIONS["atlas_rho"] + " rho_per_epoch: the mean over epochs of the correlation across layers.")
st.dataframe(table[["run", "label", "rho_all", "rho_per_epoch", "epochs"]], hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("rho_all", "rho_per_epoch")})
st.subheader("The layers each measure ranks highest")
for col, n in zip(st.columns(len(with_sal)), with_sal):
    with col:
        st.markdown(f"**{n}**")
        st.dataframe(sharpest_layers(frames[n], runs[n].sal_frame()), width="stretch")
st.caption("Averaged over each measure's epochs. SAL's column: the most learnable layers.")
