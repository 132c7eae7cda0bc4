"""Optimization paths: PCA of the weight paths, clean and protected on one plane, per layer."""
import streamlit as st

from ulviz import plots, ui
from ulviz.landscape import run_landscape
from ulviz.trajectory import divergence, divergence_summary, layer_path, pca_plane

ui.page("Optimization paths",
        "Where training took the weights, epoch by epoch, projected on the two directions along which the "
        "weights moved most (Li et al. 2018). Clean and protected runs from the same initialization share "
        "one plane.")

runs = ui.runs_or_stop()
names = ui.clean_first(runs)
base = st.sidebar.selectbox("Run", names, key="path_base")
others = ["(none)"] + [n for n in names if n != base and runs[n].layer_names == runs[base].layer_names]
other = st.sidebar.selectbox("Compare with", others, index=1 if len(others) > 1 else 0, key="path_other")
with_contour = st.sidebar.checkbox("Loss contour under the paths", value=True)
resolution = st.sidebar.select_slider("Contour resolution", [11, 21, 41], value=21)
pair = [runs[base]] + ([runs[other]] if other != "(none)" else [])

plane = ui.guard(pca_plane, pair)
if plane is not None:
    land = None
    if with_contour:
        land = ui.guard(run_landscape, pair[0].path, "pca", resolution=resolution,
                        other=pair[1].path if len(pair) > 1 else None, progress=ui.progress_callback("loss on the plane"))
    st.plotly_chart(plots.path_figure(plane, [r.name for r in pair], land), width="stretch")
    st.caption(plots.CAPTIONS["paths"])

st.subheader("One layer's path")
layer = st.selectbox("Layer", runs[base].layer_names)
lp = ui.guard(layer_path, runs[base], layer, pair[1] if len(pair) > 1 else None)
if lp is not None:
    st.plotly_chart(plots.path_figure(lp, [r.name for r in pair]), width="stretch")
    st.caption(f"The path of {layer} alone (PCA within that tensor).")

if len(pair) > 1:
    st.subheader("Per-layer divergence")
    table = ui.guard(divergence, pair[0], pair[1])
    if table is not None:
        st.plotly_chart(plots.divergence_heatmap(table, pair[1].name), width="stretch")
        st.caption(plots.CAPTIONS["divergence"])
        st.dataframe(divergence_summary(table), width="stretch", hide_index=True)
        st.caption("Per layer: distance at the last epoch, and the mean cosine between the two runs' updates "
                   "(1 = they moved the same way, 0 = unrelated).")
