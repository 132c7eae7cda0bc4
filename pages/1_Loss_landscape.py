"""Loss landscape: lines, 2-D contours and 3-D surfaces of one run or several side by side.

What is cached (in the run file, or in the data directory's landscape cache) shows at once; anything
else is computed only when asked, after its cost is shown, and can be cancelled."""
import streamlit as st

from ulviz.app import plots, ui
from ulviz.measure.landscape.runs import cached_landscapes
from ulviz.store.caches import landscape_cache_path

ui.page("Loss landscape",
        "The loss of the trained network around its weights: along random filter-normalized directions, "
        "restricted to one layer (what that layer's SAL probes), or between two weight states.")

runs = ui.runs_or_stop()
chosen = ui.pick_runs(runs, "Runs (side by side)", 2, key="land_runs")
kind = st.sidebar.radio("Slice", ["plane", "line", "interp"], format_func={
    "plane": "2-D plane (random directions)", "line": "1-D line (random direction)",
    "interp": "interpolation between weights"}.get, key="land_kind")
if not chosen:
    st.info("Choose at least one run in the sidebar.")
    st.stop()
ui.warn_incomparable(runs, chosen, "on one colour scale")

data_dir = ui.data_dir()
cache_files = {n: landscape_cache_path(data_dir, runs[n]) for n in chosen}
# the widgets open on the settings of a landscape already cached for the first run, if any
found = [s for s in (ui.guard(cached_landscapes, runs[chosen[0]].path, cache_files[chosen[0]]) or [])
         if s.get("kind") == kind and not (kind == "interp" and s.get("other"))]
cached = found[0] if found else {}
splits = ["test", "train", "clean"]
split = st.sidebar.selectbox("Data", splits, index=splits.index(cached.get("split", "test")), format_func={
    "test": "clean test set", "train": "what the run trained on (maybe protected)", "clean": "clean training set"}.get)
if kind == "interp":
    from_clean = st.sidebar.checkbox("From the clean run's final weights", value=True,
                                     help="Otherwise from each run's own initial weights to its final ones.")
    resolution = st.sidebar.select_slider("Points", [21, 41, 81], value=cached.get("resolution", 41))
    layer = None
else:
    options = [11, 21, 41] if kind == "plane" else [21, 41, 81]
    resolution = st.sidebar.select_slider("Resolution", options, value=cached.get("resolution", options[1]))
    span = st.sidebar.slider("Range (±)", 0.1, 2.0, float(cached.get("span", [-1.0, 1.0])[1]), 0.1)
    normalization = st.sidebar.selectbox("Direction normalization", ["filter", "layer", "none"])
    layers = ["(all weights)"] + runs[chosen[0]].layer_names
    layer = st.sidebar.selectbox("Restrict to one layer", layers)
    layer = None if layer == "(all weights)" else layer
    seed = st.sidebar.number_input("Direction seed", 0, 10_000, int(cached.get("seed", 0)))
subset = st.sidebar.number_input("Samples (0 = all)", 0, 100_000, int(cached.get("subset") or 0), step=64,
                                 help="The first N samples of the chosen data; fewer is faster and noisier.")
log_scale = st.sidebar.checkbox("Log colour scale", value=True) if kind == "plane" else False

clean = ui.clean_name(runs)


def request(name: str) -> tuple:
    """(run file, kind, run_landscape keywords) of run `name` with the sidebar's settings."""
    common = dict(resolution=resolution, split=split, subset=subset or None, cache_file=cache_files[name])
    if kind == "interp":
        if from_clean and clean is not None and name != clean:
            common["cache_file"] = landscape_cache_path(data_dir, runs[clean])
            return runs[clean].path, "interp", dict(other=runs[name].path, **common)
        return runs[name].path, "interp", common
    return runs[name].path, kind, dict(span=span, normalization=normalization, seed=int(seed), layer=layer, **common)


lands = ui.landscapes_on_request({name: request(name) for name in chosen}, key="land")
if lands:
    detail = None  # worked out from the landscapes' settings: the layer moved, which weights an interpolation joins
    colours = ui.colours()
    if kind == "plane":
        ui.chart(plots.landscape_contours(lands, log_scale, subtitle=detail), "landscape-plane",
                 caption=plots.CAPTIONS["contour"])
        surf = st.selectbox("3-D surface of", list(lands))
        ui.chart(plots.landscape_surface(lands[surf], surf, log_scale), f"landscape-surface-{surf}",
                 caption=plots.CAPTIONS["surface"])
    else:
        caption = plots.CAPTIONS["interp" if kind == "interp" else "line"]
        ui.chart(plots.landscape_lines(lands, "loss", subtitle=detail, colours=colours), f"landscape-{kind}-loss",
                 caption=caption)
        ui.chart(plots.landscape_lines(lands, "acc", subtitle=detail, colours=colours), f"landscape-{kind}-accuracy",
                 caption="Accuracy (fraction correct) at the same points.")
