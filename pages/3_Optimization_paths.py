"""Optimization paths: PCA of the weight paths, clean and protected on one plane, per layer."""
import streamlit as st

from ulviz.app import plots, ui
from ulviz.measure.landscape.runs import cached_landscapes
from ulviz.measure.trajectory import divergence, divergence_summary, layer_path, pca_plane
from ulviz.store.caches import landscape_cache_path

ui.page("Optimization paths",
        "Where training took the weights, epoch by epoch, projected on the two directions along which the "
        "weights moved most (Li et al. 2018). Clean and protected runs from the same initialization share "
        "one plane.")

runs = ui.runs_or_stop()
colours = ui.colours()
names = ui.clean_first(runs)
base = st.sidebar.selectbox("Run", names, key="path_base")
# a partner must have the very same tensors: a rotation run's head has 4 outputs, not 10
same = [n for n in names if n != base and runs[n].tensor_shapes() == runs[base].tensor_shapes()]
others = ["(none)"] + same
left_out = [n for n in names if n != base and n not in same]
if left_out:
    st.sidebar.caption(f"Not offered (other tensors than {base}: another model, width or task): {', '.join(left_out)}")
other = st.sidebar.selectbox("Compare with", others, index=1 if len(others) > 1 else 0, key="path_other")
labels = [base] + ([other] if other != "(none)" else [])
pair = [runs[n] for n in labels]
cache_file = landscape_cache_path(ui.data_dir(), pair[0])
# the contour's widgets open on the settings of the plane cached for this pair, if any
partner = pair[1].path.name if len(pair) > 1 else None
found = [s for s in ui.guard(cached_landscapes, pair[0].path, cache_file) or []
         if s.get("kind") == "pca" and s.get("other") == partner]
cached = found[0] if found else {}
with_contour = st.sidebar.checkbox("Loss contour under the paths", value=True)
resolution = st.sidebar.select_slider("Contour resolution", [11, 21, 41], value=cached.get("resolution", 21))
subset = st.sidebar.number_input("Contour samples (0 = all)", 0, 100_000, int(cached.get("subset") or 0), step=64,
                                 help="The first N clean test images the loss under the paths is measured on.")

plane = ui.guard(pca_plane, pair)
if plane is not None:
    land = None
    if with_contour:
        request = (pair[0].path, "pca", dict(resolution=resolution, subset=subset or None, cache_file=cache_file,
                                             other=pair[1].path if len(pair) > 1 else None))
        land = ui.landscapes_on_request({labels[0]: request}, key="paths").get(labels[0])
    ui.chart(plots.path_figure(plane, labels, land, colours), "paths", caption=plots.CAPTIONS["paths"])

st.subheader("One layer's path")
layer = st.selectbox("Layer", runs[base].layer_names)
lp = ui.guard(layer_path, runs[base], layer, pair[1] if len(pair) > 1 else None)
if lp is not None:
    ui.chart(plots.path_figure(lp, labels, colours=colours, title=f"The path of {layer} alone"), f"path-{layer}",
             caption=f"The weights of {layer} only, projected on the two directions along which that tensor moved "
                     "most (PCA within it).")

if len(pair) > 1:
    st.subheader("Per-layer divergence")
    table = ui.guard(divergence, pair[0], pair[1])
    if table is not None:
        ui.chart(plots.divergence_heatmap(table, labels[1], labels[0]), "divergence", data=table,
                 caption=plots.CAPTIONS["divergence"])
        st.dataframe(divergence_summary(table), width="stretch", hide_index=True)
        st.caption("Per layer: distance at the last epoch, and the mean cosine between the two runs' updates "
                   "(1 = they moved the same way, 0 = unrelated).")
