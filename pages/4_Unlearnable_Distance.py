"""Unlearnable Distance: how far each protection method is from truly unlearnable."""
import streamlit as st

from ulviz import plots, ui
from ulviz.store import find_runs
from ulviz.ud import study_ud

ui.page("Unlearnable Distance",
        "UD = the number of learnable layers per epoch of a protected run divided by the clean run's (Ye, "
        "Su, Qian, ICLR 2025): 1 means the protection changed nothing, 0 means truly unlearnable.")

directory = ui.data_dir()
paths = find_runs(directory)
study = ui.guard(study_ud, paths)
if study is None:
    st.info("UD needs a clean run and protected runs of the same model, all with SAL, in the data directory.")
    st.stop()
table, result, skipped = study
for msg in skipped + result.warnings:
    st.warning(msg)
st.plotly_chart(plots.ud_bars(table), width="stretch")
st.caption(plots.CAPTIONS["ud"] + f" Threshold {result.threshold:.4g} (from the clean run).")
st.dataframe(table, width="stretch", hide_index=True)
st.download_button("Download the table (CSV)", table.to_csv(index=False), "ud.csv", "text/csv")
epochs = {n: list(range(1, len(v) + 1)) for n, v in result.per_epoch.items()}
st.plotly_chart(plots.counts_per_epoch(result.per_epoch, epochs), width="stretch")
st.caption(plots.CAPTIONS["counts"])
