"""Compare runs: filter and group the runs by any config field, with the mean and a 95% interval per group."""
import pandas as pd
import streamlit as st

from ulviz.app import plots, ui
from ulviz.measure.compare import (config_fields, filter_runs, group_curves, group_summary, main_axes, runs_frame,
                                   varying_fields)

ui.page("Compare runs",
        "Every run as one row of its config fields (method, width, eps, defense, seed, any sweep axis) and results. "
        "Filter on any field, group by any fields, and read each group's mean with a 95% Student-t interval over "
        "its runs: a difference between groups that their intervals do not span is more than seed noise. "
        "Accuracy is clean-test accuracy as a fraction; UD and the ratios are against each run's clean twin (the "
        "clean run of the same settings and seed).")

runs = ui.runs_or_stop()


@st.cache_data(show_spinner="Reading the runs ...", max_entries=16)
def frame_of(stamps: tuple):
    return runs_frame(runs)


frame = ui.guard(frame_of, tuple((str(r.path), r.epochs_done, r.created, r.name) for r in runs.values()))
if frame is None or frame.empty:
    st.stop()
fields = config_fields(frame)
axes = varying_fields(frame)

sb = st.sidebar
sb.subheader("Filter")
filtered_on = sb.multiselect("Filter on fields", fields, default=[], key="cmp_filter_fields",
                             help="For each field chosen, keep the runs with the values ticked.")
keep = {}
for f in filtered_on:
    values = sorted(frame[f].astype(str).unique())
    keep[f] = sb.multiselect(f, values, default=values, key=f"cmp_filter_{f}")
view = ui.guard(filter_runs, frame, keep)
if view is None or view.empty:
    st.info("No run passes the filter.")
    st.stop()
sb.subheader("Group")
default_by = main_axes(frame)[:3]
by = sb.multiselect("Group by", fields, default=default_by, key="cmp_group_by",
                    help="Runs with the same values of these fields form a group; the fields that vary among the "
                         "runs (a sweep's axes) come first by default, the seed left out so that seeds are averaged.")
metric = sb.selectbox("Result", ["acc_last", "acc_final", "acc_peak", "UD", "ratio_last"], key="cmp_metric",
                      format_func={"acc_last": "accuracy, mean of the last 4 epochs", "acc_final": "accuracy, final",
                                   "acc_peak": "accuracy, peak", "UD": "UD against the clean twin",
                                   "ratio_last": "accuracy / the clean twin's"}.get)

st.caption(f"{len(view)} of {len(frame)} runs after the filter; fields that vary among all runs: "
           f"{', '.join(axes) or 'none'}.")
summary = ui.guard(group_summary, view, by)
if summary is not None:
    label = {"UD": "UD (clean twin = 1)", "ratio_last": "accuracy / clean twin's"}.get(metric, plots.ACC_AXIS)
    bounds = (0.0, 1.0) if metric.startswith("acc_") else None  # whiskers past it are clipped, not the numbers
    ui.chart(plots.group_bars(summary, metric, label, bounds), "compare-groups", data=summary,
             caption="Each bar: one group's mean; whiskers: its 95% t interval over the group's runs (none for a group "
                     "of one run, which has no spread to measure; over two runs, wide). Hover for the number of runs. "
                     "The table has the interval's ends.")
    shown = summary[["group", "n"] + [c for c in summary.columns if c.startswith(metric + "_")]]
    st.dataframe(shown, width="stretch", hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in shown.columns if c.startswith(metric + "_")})
    bands = ui.guard(group_curves, view, runs, by)
    if bands:
        ui.chart(plots.group_bands(bands), "compare-curves",
                 data=pd.concat([b.assign(group=g) for g, b in bands.items()], ignore_index=True),
                 caption="Clean-test accuracy after each epoch: the line is the mean over the group's runs, the band its "
                         "95% t interval (epoch 0 is the untrained model).")

st.subheader("The grid")
shown_fields = axes or fields[:3]
# config values as text: a field holds numbers for some runs and "-" for others, which no column type fits
grid = view[["run"] + shown_fields + ["epochs_done", "acc_final", "acc_last", "acc_peak", "UD"]].astype(
    {f: str for f in shown_fields})
st.dataframe(grid, width="stretch", hide_index=True, column_config={
    c: st.column_config.NumberColumn(format="%.3f") for c in ("acc_final", "acc_last", "acc_peak", "UD")})
st.caption("One row per run: the fields that vary among the runs (a sweep's axes), then its results. The CSV under "
           "the parallel coordinates has every field.")
dims = st.multiselect("Axes of the parallel coordinates", fields, default=main_axes(frame) + (["train.seed"] if "train.seed" in axes else []),
                      key="cmp_parcoords") + [metric]
ui.chart(plots.parallel_coordinates(view, dims, metric), "compare-parallel", data=view,
         caption="Each line is one run, crossing each axis at its value; the colour is the chosen result. Drag along an "
                 "axis to highlight the runs within a range.")
