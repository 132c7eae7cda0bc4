"""Defenses: does a protection survive a trainer who defends, and which layers come back?"""
import streamlit as st

from ulviz.app import plots, ui
from ulviz.studies.defense_study import NONE, bundled_study_path, defense_study, load_study

ui.page("Defenses",
        "A trainer facing unlearnable examples can defend: JPEG compression, grayscale, ISS, strong augmentation "
        "(UEraser, cutout, mixup, cutmix) or adversarial training. Each protection is trained under each defense; "
        "accuracy and UD are taken against the clean run trained under the same defense, since a defense also "
        "changes what clean training learns. Train one with `ulviz train --defense jpeg ...`, or a whole study "
        "with `benchmarks/defense_effect.py`.")

runs = ui.readable_runs(ui.data_dir())
defended = [r.path for r in runs.values() if r.config.train.defenses]
if defended:
    study = ui.guard(defense_study, [r.path for r in runs.values()])
    st.caption(f"From the {len(runs)} runs of the data directory, grouped by their defenses.")
elif not bundled_study_path().exists():
    st.info("No run in the data directory was trained with a defense. Train some with `ulviz train --defense NAME`, "
            "or a whole study with `benchmarks/defense_effect.py`, and point the data directory at them.")
    st.stop()
else:
    loaded = ui.guard(load_study, bundled_study_path())
    if loaded is None:
        st.stop()
    study, how = loaded
    st.info("No run in the data directory was trained with a defense, so this page shows the study bundled with "
            f"ulviz (`{bundled_study_path().name}`, made by `benchmarks/defense_effect.py`): {how}")
if study is None or study.table.empty:
    st.stop()

ui.chart(plots.defense_heatmap(study.pivot("accuracy"), "accuracy", study.pivot("ratio")), "defenses-accuracy",
         data=study.pivot("accuracy").reset_index())
ui.chart(plots.defense_heatmap(study.pivot("UD"), "UD"), "defenses-ud", data=study.pivot("UD").reset_index())
st.caption("Top: clean-test accuracy (mean of the last 4 epochs), coloured by its ratio to the clean run under the "
           "same defense (in brackets). Bottom: UD, the learnable layers per epoch relative to that clean run; 0 would "
           "be truly unlearnable, 1 is as learnable as clean training. A defense that works lifts a protection's row "
           "back towards 1 in both. Empty cells: no run, or no SAL.")
ui.show_warnings(study.notes, "notes")

methods = [m for m in study.per_layer["method"].unique() if m != "clean"]
defenses = [d for d in study.per_layer["defense"].unique() if d != NONE]
if methods and defenses:
    a, b = st.columns(2)
    method = a.selectbox("Protection", methods, key="defense_method")
    defense = b.selectbox("Defense", defenses, key="defense_choice")
    fractions = study.layers(method, defense)
    if fractions.empty:
        st.info(f"{method} has no SAL under {defense} or without a defense.")
    else:
        ui.chart(plots.defense_layers(fractions, method), f"defenses-layers-{method}-{defense}",
                 data=fractions.reset_index())
        st.caption("For each layer, the share of SAL epochs in which its SAL is above the threshold of the clean run "
                   "trained the same way (without a defense, or under the chosen one). Layers whose bar rises under "
                   "the defense are the ones it makes learnable again.")
st.dataframe(study.table.drop(columns=["run"]), width="stretch", hide_index=True, column_config={
    c: st.column_config.NumberColumn(format="%.3f") for c in ("accuracy", "ratio", "UD", "learnable")})
