"""Layer surgery: does a layer matter causally? Transplant, reset or freeze layers of a protected run."""
import pandas as pd
import streamlit as st

from ulviz.app import plots, ui
from ulviz.core.errors import UlvizError
from ulviz.measure.surgery import OPS, SurgeryConfig, block_transplants, layer_surgery, mean_sal, select_layers

ui.page("Layer surgery",
        "If SAL says some layers are still learnable under a protection and others are not, giving the protected "
        "network the clean run's layers should restore clean accuracy where the protection bit. Transplant copies "
        "the chosen layers (and their batch-norms) from the clean run at the same epoch; reset re-initialises them "
        "and trains only them; freeze retrains from scratch on the protected data with them fixed at the clean "
        "values. Same from the command line: `ulviz surgery PROTECTED.h5 --clean CLEAN.h5 --layers SPEC --op OP`.")

runs = ui.runs_or_stop()
names = ui.clean_first(runs)
clean = ui.clean_name(runs)
protected_names = [n for n in names if n != clean] or names
protected = st.sidebar.selectbox("Protected run", protected_names, key="surgery_protected")
clean = st.sidebar.selectbox("Clean run", names, index=names.index(clean) if clean else 0, key="surgery_clean")
p, c = runs[protected], runs[clean]
epoch = st.sidebar.number_input("Epoch", 0, p.epochs_done, p.epochs_done, key="surgery_epoch")

a, b = st.columns([1, 2])
op = a.radio("Operation", OPS, horizontal=True, key="surgery_op")
spec = b.text_input("Layers (SPEC)", "sal-top:5" if len(p.sal_epochs) else "layer1", key="surgery_spec",
                    help="names or prefixes (layer1,linear), all, none, sal-top:k / sal-bottom:k (most / least "
                         "learnable under the protection), sal-diff:k (SAL most unlike the clean run's)")
steps, data = 0, "clean"
if op != "transplant":
    s, d = st.columns(2)
    steps = s.number_input("Training steps", 0, 100_000, 100, key="surgery_steps")
    if op == "reset":
        data = d.radio("Reset trains on", ["clean", "protected"], horizontal=True, key="surgery_data")
    st.caption("Reset and freeze train: a few hundred steps take a while on a CPU.")

with_sal = {n: r for n, r in ((protected, p), (clean, c)) if len(r.sal_epochs)}
if with_sal:
    try:
        chosen = select_layers(spec, p, c)
    except UlvizError:  # a bad SPEC is reported by Operate, in one box; the chart just marks nothing
        chosen = []
    ui.chart(plots.surgery_layers({n: mean_sal(r) for n, r in with_sal.items()}, p.layer_names, chosen, ui.colours()),
             "surgery-mean-sal")
    st.caption("Mean SAL of each layer over the epochs with SAL: sal-top:k picks the k highest bars of the "
               "protected run, sal-bottom:k the lowest, sal-diff:k the layers whose bars differ most between "
               "the two runs. The layers the current SPEC picks are marked ▶.")
else:
    st.info("Neither run has SAL: the SAL-based SPECs need it (`ulviz sal RUN.h5`); layer names still work.")

if st.button("Operate", type="primary", key="surgery_go"):
    config = SurgeryConfig(op, spec, int(epoch), int(steps), data)
    with st.spinner(f"{op} on {protected}"):
        r = ui.guard(layer_surgery, p.path, c.path, config)
    if r is not None:
        m = st.columns(4)
        m[0].metric("clean-test accuracy", f"{r.accuracy:.3f}")
        m[1].metric("protected run", f"{r.protected_accuracy:.3f}")
        m[2].metric("clean run", f"{r.clean_accuracy:.3f}")
        # no gap (the protection did not bite at this epoch) leaves nothing to restore
        m[3].metric("gap restored", f"{r.restored:.0%}" if r.restored == r.restored else "no gap")
        st.caption(f"{len(r.layers)} layer(s), {len(r.tensors)} tensors: {', '.join(r.layers) or 'none'}.")

st.subheader("One block at a time")
st.caption("Transplants each block (stem, each stage, head) alone at the chosen epoch: a few evaluations of the "
           "clean test set.")
if st.button("Transplant each block", key="surgery_blocks"):
    with st.spinner("transplanting"):
        table = ui.guard(block_transplants, p, c, int(epoch))
    if table is not None:
        ui.chart(plots.surgery_bars(table, float(p.metrics.test_acc.iloc[int(epoch)]),
                                    float(c.metrics.test_acc.iloc[int(epoch)]),
                                    f"{protected}: one block from {clean} at epoch {int(epoch)}"),
                 "surgery-blocks", data=pd.DataFrame(table))
        st.caption(plots.CAPTIONS["surgery_blocks"])
        st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")
