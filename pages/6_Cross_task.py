"""Cross-task: do protected images still teach other tasks (rotation, segmentation) than the one
the protection was made against?"""
import streamlit as st

from ulviz.app import plots, ui
from ulviz.measure.probe import linear_probe
from ulviz.studies.crosstask import crosstask_table

ui.page("Cross-task",
        "Unlearnable examples are made against classification. Trained on the same protected images, does a "
        "network still learn another task (rotation prediction, segmentation), and do its features still "
        "carry the classes? Each run is scored on clean test images; runs are grouped by task, each against "
        "the clean run of its own task. Make a study with `ulviz crosstask --tasks classify,rotation ...`.")

runs = ui.runs_or_stop()
table = ui.guard(crosstask_table, [r.path for r in runs.values()], probe=False)
if table is None or table.empty:
    st.stop()

ui.chart(plots.crosstask_heatmap(table), "crosstask", data=table)
st.caption("Each cell: the protected run's clean-test score (accuracy, or IoU for segment) divided by the clean "
           "run's of the same task, the score itself in brackets. The paper's finding: the classification column "
           "falls far below 1 while the other tasks stay near 1, so the images were not made unlearnable, only "
           "their labels' task was. A task column without a clean run has no ratio.")


@st.cache_data(show_spinner=False, max_entries=256)
def probe_of(path: str, stamp: tuple) -> float:
    return linear_probe(path).test_acc


stamps = {r.path: (r.epochs_done, r.created) for r in runs.values()}
if st.session_state.get("crosstask_probe") or st.button(
        f"Compute the linear probes ({len(runs)} runs, a few seconds each)", key="probe_button"):
    st.session_state["crosstask_probe"] = True
    bar = st.progress(0.0, text="linear probes")
    values = []
    for i, run in enumerate(runs.values()):
        values.append(ui.guard(probe_of, str(run.path), stamps[run.path]))
        bar.progress((i + 1) / len(runs), text=f"linear probes: {i + 1}/{len(runs)}")
    bar.empty()
    table["probe"] = [float("nan") if v is None else v for v in values]
    ui.chart(plots.probe_bars(table), "crosstask-probe", data=table)
    st.caption("A logistic-regression head fitted on each frozen network's penultimate features of the clean training "
               "images, with their true classes, scored on the clean test images. High bars under a protection whose "
               "classification score collapsed mean the features still carry the classes.")
if table["probe"].isna().all():  # not computed yet: no column of blanks
    table = table.drop(columns="probe")
st.dataframe(table, width="stretch", hide_index=True, column_config={
    c: st.column_config.NumberColumn(format="%.3f") for c in ("score", "ratio", "probe", "UD")})
st.caption("score: the task's metric on clean test data (accuracy averaged over the last 4 epochs; IoU of the final "
           "weights for segment); ratio: to the clean run of the same task, dataset and model (none without one); "
           "probe: linear-probe accuracy; UD: against that clean run, where both have SAL.")
