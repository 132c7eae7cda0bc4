"""Perturbations: what a protection adds to the training images, seen and measured."""
import numpy as np
import pandas as pd
import streamlit as st

from ulviz.app import plots, ui
from ulviz.measure.perturbations import CLASSWISE_AT, LOW_CUTOFF, amplified, radial_profile, run_report, summary_row
from ulviz.protect.poisons import method_info

ui.page("Perturbations",
        "The noise each protection adds to the training images: a gallery per class (the perturbation amplified to "
        "be visible), its amplitude spectrum (where its energy sits between low and high frequencies, the argument "
        "of image shortcut squeezing), its size (L-inf, L2, L0), whether it is the same for every image of a class, "
        "and how well a linear model names the class from the perturbation alone: the shortcut's strength in one "
        "number.")

runs = ui.runs_or_stop()
protected = [n for n in ui.clean_first(runs) if not ui.is_clean(runs[n])]
if not protected:
    st.info("Only clean runs here: a perturbation needs a protected run.")
    st.stop()


def quick(name: str) -> bool:
    """Methods without a surrogate network regenerate in seconds; the others may take minutes on a CPU."""
    return "surrogate" not in method_info(runs[name].config.poison.method).defaults


chosen = st.sidebar.multiselect("Protected runs", protected, default=[n for n in protected if quick(n)][:4],
                                key="pert_runs",
                                help="Runs whose method trains a surrogate network (EM, REM, TAP) regenerate their "
                                     "protection first, unless it is cached: minutes on a CPU.")
per_class = st.sidebar.slider("Images per class in the gallery", 1, 4, 1, key="pert_per_class")
if not chosen:
    st.info("Choose protected runs in the sidebar.")
    st.stop()


@st.cache_data(show_spinner=False, max_entries=32)
def report_of(path: str, stamp: tuple, per_class: int):
    return run_report(ui.load_run(path), per_class)


slow = [n for n in chosen if not quick(n)]
if slow and not st.session_state.get("pert_go"):
    if st.button(f"Regenerate the protections of {', '.join(slow)} (may take minutes)", key="pert_button"):
        st.session_state["pert_go"] = True  # once asked, for the rest of the session
    else:
        st.info(f"{', '.join(slow)}: made by training a surrogate network, so its protection is regenerated only "
                "when asked (and cached afterwards). The other runs are shown below.")
        chosen = [n for n in chosen if quick(n)]
reports = {}
for name in chosen:
    run = runs[name]
    with st.spinner(f"Measuring the perturbation of {name} (regenerating its protection) ..."):
        r = ui.guard(report_of, str(run.path), (run.created, run.epochs_done), per_class)
    if r is not None:
        reports[name] = r
if not reports:
    st.stop()

st.subheader("How big, how class-bound, how strong a shortcut")
table = pd.DataFrame([{"run": n, "method": runs[n].config.poison.method, **summary_row(r)} for n, r in reports.items()])
st.dataframe(table, width="stretch", hide_index=True, column_config={
    c: st.column_config.NumberColumn(format="%.3f") for c in table.columns if c not in ("run", "method", "class-wise")})
st.caption("Norms in pixel units of [0, 1] images, per image over all its channels: L-inf the largest change of one "
           "value (8/255 = 0.031), L2 the Euclidean size, L0 the share of values changed (median over images). "
           f"Low-frequency energy: the share of the perturbation's energy within {LOW_CUTOFF:g} of the Nyquist "
           "frequency. Class-wise share: the part of the perturbation's variance its class means explain (1 = one "
           f"pattern per class; class-wise when at least {CLASSWISE_AT:g}). Separability: held-out accuracy of a "
           "logistic regression that sees the perturbations alone; near 1 the perturbation names the class by itself "
           "(a shortcut a network learns first), near chance it carries no class.")
st.download_button("Download the table (CSV)", table.to_csv(index=False), "perturbations.csv", "text/csv",
                   on_click="ignore")

st.subheader("Gallery")
shown = st.selectbox("Run", list(reports), key="pert_gallery_run")
r = reports[shown]
labels = [f"class {int(c)}" for c in r.gallery_labels]
ui.chart(plots.perturbation_gallery({"clean": r.clean, "protected": r.protected, "perturbation": amplified(r.delta)},
                                    labels, f"{shown}: clean, protected, and the perturbation amplified"),
         f"perturbations-gallery-{shown}",
         data=pd.DataFrame({"class": r.gallery_labels, "linf": np.abs(r.delta).reshape(len(r.delta), -1).max(axis=1)}),
         caption="Top: clean training images, one column per image, by class; middle: the same images as the run "
                 "trained on them; bottom: the difference, stretched so that the largest change in this gallery is "
                 "black or white (grey = unchanged). The same pattern down a class's columns is a class-wise "
                 "perturbation.")

st.subheader("Spectrum")
ui.chart(plots.spectrum_heatmaps({n: x.spectrum for n, x in reports.items()}), "perturbations-spectrum",
         caption="Mean amplitude of the 2-D Fourier transform of the perturbations (per channel, averaged over "
                 "images), log scale, low frequencies at the centre. Smooth patches (LSP) gather near the centre; "
                 "pixel-level noise spreads evenly; a few changed pixels (OPS) spread to the corners.")
profiles = {n: radial_profile(x.spectrum) for n, x in reports.items()}
ui.chart(plots.radial_spectrum(profiles, ui.colours(), LOW_CUTOFF), "perturbations-radial",
         data=pd.concat([pd.DataFrame({"run": n, "frequency": f, "amplitude": a}) for n, (f, a) in profiles.items()],
                        ignore_index=True),
         caption="The same, averaged over rings of equal frequency. Image shortcut squeezing (Liu et al. 2023) picks "
                 "its defense by this: grayscale or low-quality JPEG removes high-frequency and colour perturbations, "
                 "while low-frequency ones survive compression.")
