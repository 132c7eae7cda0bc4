"""Loss landscape: lines, 2-D contours and 3-D surfaces of one run or several side by side."""
import streamlit as st

from ulviz import plots, ui
from ulviz.landscape import run_landscape

ui.page("Loss landscape",
        "The loss of the trained network around its weights: along random filter-normalized directions, "
        "restricted to one layer (what that layer's SAL probes), or between two weight states.")

runs = ui.runs_or_stop()
chosen = ui.pick_runs(runs, "Runs (side by side)", 2, key="land_runs")
kind = st.sidebar.radio("Slice", ["plane", "line", "interp"], format_func={
    "plane": "2-D plane (random directions)", "line": "1-D line (random direction)",
    "interp": "interpolation between weights"}.get, key="land_kind")
split = st.sidebar.selectbox("Data", ["test", "train", "clean"], format_func={
    "test": "clean test set", "train": "what the run trained on (maybe protected)", "clean": "clean training set"}.get)
if kind == "interp":
    from_clean = st.sidebar.checkbox("From the clean run's final weights", value=True,
                                     help="Otherwise from each run's own initial weights to its final ones.")
    resolution = st.sidebar.select_slider("Points", [21, 41, 81], value=41)
else:
    resolution = st.sidebar.select_slider("Resolution", [11, 21, 41] if kind == "plane" else [21, 41, 81],
                                          value=21 if kind == "plane" else 41)
    span = st.sidebar.slider("Range (±)", 0.1, 2.0, 1.0, 0.1)
    normalization = st.sidebar.selectbox("Direction normalization", ["filter", "layer", "none"])
    layers = ["(all weights)"] + (runs[chosen[0]].layer_names if chosen else [])
    layer = st.sidebar.selectbox("Restrict to one layer", layers)
    seed = st.sidebar.number_input("Direction seed", 0, 10_000, 0)
subset = st.sidebar.number_input("Samples (0 = all)", 0, 100_000, 0, step=100)
log_scale = st.sidebar.checkbox("Log colour scale", value=True) if kind == "plane" else False
if not chosen:
    st.info("Choose at least one run in the sidebar.")
    st.stop()

clean = ui.clean_name(runs)
lands = {}
for name in chosen:
    run = runs[name]
    common = dict(resolution=resolution, split=split, subset=subset or None,
                  progress=ui.progress_callback(f"computing {name}"))
    if kind == "interp":
        if from_clean and clean is not None and name != clean:
            land = ui.guard(run_landscape, runs[clean].path, "interp", other=run.path, **common)
        else:
            land = ui.guard(run_landscape, run.path, "interp", **common)
    else:
        land = ui.guard(run_landscape, run.path, kind, span=span, normalization=normalization, seed=int(seed),
                        layer=None if layer == "(all weights)" else layer, **common)
    if land is not None:
        lands[name] = land

if lands:
    if kind == "plane":
        st.plotly_chart(plots.landscape_contours(lands, log_scale), width="stretch")
        st.caption(plots.CAPTIONS["contour"])
        surf = st.selectbox("3-D surface of", list(lands))
        st.plotly_chart(plots.landscape_surface(lands[surf], surf, log_scale), width="stretch")
        st.caption(plots.CAPTIONS["surface"])
    else:
        st.plotly_chart(plots.landscape_lines(lands, "loss"), width="stretch")
        st.caption(plots.CAPTIONS["line"])
        st.plotly_chart(plots.landscape_lines(lands, "acc"), width="stretch")
        st.caption("Accuracy (%) on the same points.")
