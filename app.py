"""ulviz dashboard, home: the runs, loading run files, launching new runs as background jobs.

Pages stay thin: read widgets, call the library, show a figure."""
from pathlib import Path

import streamlit as st

from ulviz import plots, ui
from ulviz.config import DataConfig, ModelConfig, PoisonConfig, RunConfig, SALConfig, TrainConfig, parse_param
from ulviz.errors import UlvizError
from ulviz.jobs import UPLOAD_LIMIT, JobManager, add_run_file, safe_name
from ulviz.models import list_models
from ulviz.poisons import list_methods, method_info, resolve_params
from ulviz.store import find_runs, runs_table
from ulviz.ud import study_ud

st.set_page_config(page_title="ulviz", layout="wide")
st.title("ulviz: how far are unlearnable examples from truly unlearnable?")
st.caption(
    "Train the same model on clean and on protected (availability-poisoned) data, then compare "
    "per-layer Sharpness-Aware Learnability (SAL) and the Unlearnable Distance (UD) of each method "
    "(Ye, Su, Qian, ICLR 2025). The pages on the left show landscapes, SAL, paths and UD."
)

data_dir = ui.data_dir()
jobs = JobManager(data_dir)

# -- runs ------------------------------------------------------------------------------------
paths = find_runs(data_dir)
st.subheader(f"Runs in {data_dir}")
if not paths:
    st.info(f"No run files (*.h5) in {data_dir}. Create one with "
            "`ulviz train --dataset digits --model lenet5 --epochs 30 --out data/runs/clean.h5`, "
            "the demo study with `ulviz demo`, or the form below.")
else:
    table = runs_table(paths)
    st.dataframe(table, width="stretch", hide_index=True)
    st.caption("One row per run file: its unlearnable method, model, dataset, epochs done, status and final "
               "accuracies (train = on the data it trained on, test = clean test set).")
    runs = ui.readable_runs(data_dir)  # reports each unreadable file in an error box
    if runs:
        st.plotly_chart(plots.metrics_figure({n: r.metrics for n, r in runs.items()}), width="stretch")
        st.caption(plots.CAPTIONS["metrics"])
    study = ui.guard(study_ud, paths)
    if study is not None:
        ud, result, skipped = study
        st.subheader("Unlearnable Distance")
        st.caption(f"UD = learnable layers per epoch / the clean run's; a layer is learnable when its SAL "
                   f"exceeds the clean run's threshold {result.threshold:.4g}. Clean = 1, truly unlearnable = 0.")
        st.dataframe(ud, width="stretch", hide_index=True)
        for w in result.warnings:
            st.warning(w)

# -- load a run file -------------------------------------------------------------------------
with st.expander("Load a run file"):
    typed = st.text_input("Path of a run file (.h5) to copy into the data directory")
    upload = st.file_uploader("or upload one", type=["h5"])
    if st.button("Load"):
        try:
            if upload is not None:
                name, data = upload.name, upload.getvalue()
            elif typed:
                source = Path(typed).expanduser()
                if not source.is_file():
                    raise UlvizError(f"{typed}: no such file")
                if source.stat().st_size > UPLOAD_LIMIT:  # before reading it all into memory
                    raise UlvizError(f"{typed}: over the {UPLOAD_LIMIT >> 20} MB limit")
                name, data = source.name, source.read_bytes()
            else:
                raise UlvizError("give a path or upload a file")
            target = add_run_file(data_dir, name, data)
            st.success(f"loaded {name} as {target}")
            st.rerun()
        except UlvizError as e:
            st.error(str(e))

# -- launch a run ----------------------------------------------------------------------------
st.subheader("Launch a run")
with st.form("launch"):
    c1, c2, c3 = st.columns(3)
    name = c1.text_input("Run name", "my-run")
    dataset = c1.selectbox("Dataset", ["digits", "synthetic"], help="Local-file datasets: use the CLI.")
    model = c1.selectbox("Model", list_models(), index=list_models().index("lenet5"))
    method = c2.selectbox("Unlearnable method", [m for m in list_methods() if m != "import"])
    params_text = c2.text_input("Method parameters (key=value, comma-separated)", "",
                                help="e.g. mode=class, eps=0.0627; defaults: " + "; ".join(
                                    f"{m}: {', '.join(method_info(m).defaults) or '-'}" for m in list_methods()))
    ratio = c2.slider("Poison ratio", 0.0, 1.0, 1.0, 0.05)
    epochs = c3.number_input("Epochs", 1, 500, 10)
    seed = c3.number_input("Seed", 0, 1_000_000, 0)
    sal = c3.selectbox("SAL after every epoch", ["exact", "fast", "none"])
    submitted = st.form_submit_button("Launch")
if submitted:
    try:
        params = dict(parse_param(item) for item in params_text.split(",") if item.strip())
        config = RunConfig(name=safe_name(name), data=DataConfig(dataset), model=ModelConfig(model),
                           poison=PoisonConfig(method, ratio, int(seed), params),
                           train=TrainConfig(epochs=int(epochs), seed=int(seed), device="auto"),
                           sal=SALConfig(estimator=sal))
        resolve_params(method, params)  # unknown parameters refused here, not in the job
        job = jobs.launch(config)
        st.success(f"launched {job.name} ({job.state}); it writes {job.out}")
    except UlvizError as e:
        st.error(str(e))

# -- jobs --------------------------------------------------------------------------------------
@st.fragment(run_every=2.0)  # follows running jobs by rereading their run files; the jobs only write
def show_jobs():
    all_jobs = jobs.poll()
    if not all_jobs:
        return
    st.subheader("Jobs")
    for job in reversed(all_jobs[-10:]):
        try:
            run = ui.load_run(job.out) if Path(job.out).exists() else None
        except UlvizError:
            run = None
        running = job.state == "started" and job.alive()
        status = run.status if run is not None else ("waiting to start" if job.state == "queued" else job.state)
        if job.state == "cancelled" and status in ("running", "interrupted"):
            status = "cancelled"
        done, total = (run.epochs_done if run is not None else 0), int(job.config["train"]["epochs"])
        cols = st.columns([3, 5, 1])
        cols[0].markdown(f"**{job.name}** · {job.config['poison']['method']} · {status}")
        cols[1].progress(min(done / total, 1.0), text=f"epoch {done}/{total}")
        if (running or job.state == "queued") and cols[2].button("Cancel", key=f"cancel-{job.id}"):
            jobs.cancel(job.id)
            st.rerun()
        if run is not None and len(run.metrics) > 1:
            with st.expander(f"{job.name}: metrics so far"):
                st.dataframe(run.metrics, width="stretch", hide_index=True)
        if status in ("failed", "interrupted") or (job.state == "started" and not running and run is None):
            st.error(f"{job.name} {status}: last lines of its log\n\n```\n{job.log_tail()}\n```")


show_jobs()
