"""Unlearnable Distance: how far each protection method is from truly unlearnable."""
import streamlit as st

import pandas as pd

from ulviz.app import plots, ui
from ulviz.core.accuracy import accuracy_columns
from ulviz.measure.sal_runs import describe_sal
from ulviz.measure.seeds import seed_summary, seed_table, summary_text
from ulviz.measure.ud import study_ud, ud_variants

ui.page("Unlearnable Distance",
        "UD = the number of learnable layers per epoch of a protected run divided by the clean reference's (Ye, "
        "Su, Qian, ICLR 2025): 1 means the protection changed nothing, 0 means truly unlearnable.")

directory = ui.data_dir()
paths = ui.visible_paths(directory)
first = ui.guard(study_ud, paths)
if first is None:
    st.info("UD needs a clean run and protected runs of the same model, all with SAL, in the data directory.")
    st.stop()
reference = first.reference.path
if len(first.candidates) > 1:
    reference = st.sidebar.selectbox("Clean reference", first.candidates, format_func=lambda p: ui.label_of(p),
                                     help="UD counts learnable layers relative to this clean run; the threshold "
                                          "comes from its SAL. Only runs of its model are compared.")
study = first if reference == first.reference.path else ui.guard(study_ud, paths, reference)
if study is None:
    st.stop()
table, result = study.table, study.result
# accuracy three ways (final, mean of the last 4 trained epochs, peak) beside UD, epoch 0 never counted
acc = pd.DataFrame([accuracy_columns(ui.load_run(s.path).metrics) for s in study.sources], index=table.index)
table = pd.concat([table.drop(columns="final_test_acc"), acc], axis=1)

st.markdown(
    f"**Reference**: {ui.label_of(study.reference.path)} ({study.reference.path}). "
    f"**How the SAL was measured**: {describe_sal(study.reference.sal_settings, study.reference.sal_epochs)}. "
    "The same settings for every run compared here.")
ui.chart(plots.ud_bars(table.assign(final_test_acc=table["acc_final"]), colours=ui.colours()), "ud", data=table,
         caption=plots.CAPTIONS["ud"] + f" Threshold {result.threshold:.4g} (from the reference's SAL).")
with st.expander("How to read UD", expanded=False):
    st.markdown(
        "- **UD near 1**: as many layers stay sharp (learnable) as in clean training; the protection "
        "does not stop learning.\n"
        "- **UD near 0**: almost no layer is learnable any more: close to truly unlearnable.\n"
        "- **UD above 1**: *more* layers stay sharp than in clean training. The network is still learning "
        "something, just not the clean task (typically the shortcut the protection planted); it is far from "
        "unlearnable even when its clean-test accuracy collapses.\n"
        "- A run **without SAL rows has no UD** (not 0): compute its SAL with `ulviz sal RUN.h5`.\n"
        "- A second **clean** run (role *clean*) is not a protected run: its UD shows how much clean "
        "training itself varies, a yardstick for the differences between methods.")
st.dataframe(table, width="stretch", hide_index=True, column_config={
    "UD": st.column_config.NumberColumn(format="%.3f"), "count": st.column_config.NumberColumn(
        "learnable layers / epoch", format="%.2f"),
    "acc_final": st.column_config.NumberColumn("acc final", format="%.3f", help="clean-test accuracy at the last epoch"),
    "acc_last": st.column_config.NumberColumn("acc last 4", format="%.3f",
                                             help="mean clean-test accuracy of the last 4 trained epochs"),
    "acc_peak": st.column_config.NumberColumn("acc peak", format="%.3f", help="the best trained epoch's")})
st.caption("Accuracy as a fraction of the clean test set, read three ways: at the last epoch, the mean of the last 4 "
           "trained epochs (epoch 0, the untrained model, never counts) and the best epoch.")
st.download_button("Download the table (CSV)", table.to_csv(index=False), "ud.csv", "text/csv")
with st.expander("How much UD moves with the threshold rule and the epochs counted", expanded=False):
    same = [(label, src) for label, src in zip(table["run"], study.sources)
            if src is not study.reference and list(src.sal_epochs) == list(study.reference.sal_epochs)]
    if same:
        variants = ui.guard(ud_variants, study.reference.sal, {label: src.sal for label, src in same},
                            study.reference.sal_epochs)
        if variants is not None:
            st.dataframe(variants, width="stretch", column_config={  # two decimals, as the KMeans range
                c: st.column_config.NumberColumn(format="%.2f") for c in variants.select_dtypes("number")})
            st.caption("UD of each run (rows) against the reference when one choice changes: the threshold from the "
                       "exact 2-means midpoint (the reference), from scikit-learn's KMeans as the original calls it "
                       "(the range over 10 random starts), or the clean SAL's median or 75th percentile; and only the "
                       "later SAL epochs counted. The SAL sample count and eps change the SAL itself: "
                       "`benchmarks/ud_sensitivity.py` recomputes it (docs/science.md has the table).")
    else:
        st.caption("No run has SAL at the reference's epochs.")
ui.chart(plots.counts_per_epoch(result.per_epoch, study.sal_epochs(), colours=ui.colours()), "ud-counts",
         caption=plots.CAPTIONS["counts"])
notes = study.skipped + result.warnings
if notes:
    with st.expander(f"{len(notes)} run(s) or value(s) left out"):
        st.markdown("\n".join(f"- {m}" for m in notes))

# -- several seeds: each run against the clean run of its own seed, then mean and spread
seeds = ui.guard(seed_table, paths)
if seeds is not None and len(seeds) and seeds.groupby("variant")["seed"].nunique().max() > 1:
    st.subheader("Over seeds")
    summary = seed_summary(seeds)
    ui.chart(plots.ud_seed_bars(summary, seeds), "ud-seeds", data=summary)
    st.caption("Runs that differ only in their training seed are grouped (their name without the seed). Each run's UD "
               "is taken against the clean run with the same seed and settings, so the spread is the seeds', not "
               "the reference's. Runs without such a clean run, or without SAL, have no UD here.")
    st.dataframe(summary_text(summary), width="stretch", hide_index=True)
    st.caption("Mean over seeds [95% t interval]. Accuracy on clean test data read three ways: at the last epoch, "
               "the mean of the last 4 trained epochs, and the best epoch; ratio_last divides by the clean twin's. "
               "The CSV has every reading with its interval and standard deviation.")
    st.download_button("Download the seed summary (CSV)", summary.to_csv(index=False), "ud-seeds.csv", "text/csv")
