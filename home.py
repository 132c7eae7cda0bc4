"""ulviz dashboard, home (reached through app.py): the runs, loading run files, launching new runs as background jobs.

Pages stay thin: read widgets, call the library, show a figure."""
from pathlib import Path

import pandas as pd
import streamlit as st

from ulviz.app import plots, ui
from ulviz.app.jobs import BUILT_IN_DATASETS, JobManager, add_run_file, launch_config, read_run_source
from ulviz.core.accuracy import accuracy_columns
from ulviz.core.errors import UlvizError
from ulviz.core.provenance import PROVENANCE_COLUMNS, provenance_columns
from ulviz.data.datasets import list_datasets
from ulviz.data.recipes import AUGMENTATIONS, list_recipes
from ulviz.measure.compare import comparable
from ulviz.measure.ud import study_ud
from ulviz.models.registry import list_models
from ulviz.protect.poisons import list_methods, method_info
from ulviz.store.runs import find_runs, runs_table
from ulviz.studies.sweep import status_line, sweep_progress

st.set_page_config(page_title="ulviz", layout="wide")
st.title("ulviz: how far are unlearnable examples from truly unlearnable?")
st.caption(
    "Train the same model on clean and on protected (availability-poisoned) data, then compare "
    "per-layer Sharpness-Aware Learnability (SAL) and the Unlearnable Distance (UD) of each method "
    "(Ye, Su, Qian, ICLR 2025). The pages on the left show landscapes, SAL, paths and UD."
)

data_dir = ui.data_dir()
jobs = JobManager(data_dir)
ui.show_flash()

# -- runs ------------------------------------------------------------------------------------
all_paths = find_runs(data_dir)
paths = ui.visible_paths(data_dir)  # what every page shows: hidden runs left out
st.subheader(f"Runs in {data_dir}")
if all_paths:  # the count also tells a user (and the browser test) that a finished job's run arrived
    st.caption(f"{len(all_paths)} run file(s)")
if not all_paths:
    st.info(f"No run files (*.h5) in {data_dir}. Create one with "
            "`ulviz train --dataset digits --model lenet5 --epochs 30 --out data/runs/clean.h5`, "
            "the demo study with `ulviz demo`, or the form below.")
else:
    runs = ui.readable_runs(data_dir)  # reports each unreadable file in an error box
    label_of = {str(r.path): label for label, r in ui.all_runs(data_dir)[0].items()}
    table = runs_table(paths)
    if len(table):
        table.insert(0, "run", [label_of.get(f, "") for f in table["file"]])
        if not table["error"].astype(bool).any():  # each unreadable file has its error box above
            table = table.drop(columns="error")
        # clean-test accuracy three ways (final, last 4 trained epochs, peak), in place of the final one alone
        by_file = {str(r.path): r for r in runs.values()}
        acc = [accuracy_columns(by_file[f].metrics) if f in by_file else {} for f in table["file"]]
        at = list(table.columns).index("test_acc") if "test_acc" in table.columns else len(table.columns)
        for i, column in enumerate(("acc_final", "acc_last", "acc_peak")):
            table.insert(at + i, column, [a.get(column) for a in acc])
        table = table.drop(columns=[c for c in ("test_acc",) if c in table.columns])
        if st.toggle("Show provenance", key="home_provenance",
                     help="What made each run: code revision, code digest, torch, device, threads, the digest "
                          "of the images it trained on, and whether its protection is stored in the file."):
            cells = [provenance_columns(by_file[f].provenance) if f in by_file else {} for f in table["file"]]
            for column in PROVENANCE_COLUMNS:
                table[column] = [c.get(column) for c in cells]
    three = {c: st.column_config.NumberColumn(c.replace("_", " "), format="%.3f") for c in
             ("train_acc", "acc_final", "acc_last", "acc_peak")}
    st.dataframe(table, width="stretch", hide_index=True, column_config=three)
    hidden = len(all_paths) - len(paths)
    st.caption("One row per run file: its label on every page, unlearnable method, model, dataset, epochs done, "
               "status and accuracies as fractions: train_acc at the last epoch on the data it trained on (maybe "
               "protected); on the clean test set, acc final (last epoch), acc last (mean of the last 4 trained "
               "epochs; epoch 0, the untrained model, never counts) and acc peak (best epoch)."
               + (f" {hidden} hidden run file(s) not shown (see Manage runs)." if hidden else ""))
    if runs:
        names = ui.clean_first(runs)
        reference = ui.clean_name(runs) or names[0]
        same, _ = comparable(runs, reference)
        default = [n for n in names if n in same][:4]
        shown = st.multiselect("Runs in the chart", names, default=default, key="home_chart_runs",
                               help="A few at a time: each run draws four lines. The default: up to four runs "
                                    f"comparable with {reference} (same dataset, model and task).")
        if shown:
            ui.chart(plots.metrics_figure({n: runs[n].metrics for n in shown}, ui.colours(data_dir)), "metrics",
                     data=pd.concat([runs[n].metrics.assign(run=n) for n in shown], ignore_index=True),
                     caption=plots.CAPTIONS["metrics"])
    study = ui.guard(study_ud, paths)
    if study is not None:
        st.subheader("Unlearnable Distance")
        st.caption(f"UD = learnable layers per epoch / the clean reference's ({ui.label_of(study.reference.path)}); "
                   f"a layer is learnable when its SAL exceeds the reference's threshold "
                   f"{study.result.threshold:.4g}. Clean = 1, truly unlearnable = 0, above 1 = more layers still "
                   "learning than in clean training (something is learned, just not the clean task). Runs without "
                   "SAL have no UD. Details, and another clean reference: the Unlearnable Distance page.")
        ud_acc = pd.DataFrame([accuracy_columns(ui.load_run(s.path).metrics) for s in study.sources],
                              index=study.table.index)
        st.dataframe(pd.concat([study.table.drop(columns="final_test_acc"), ud_acc], axis=1), width="stretch",
                     hide_index=True, column_config={**three, **{c: st.column_config.NumberColumn(format="%.3f")
                                                                  for c in ("UD", "count")}})
        ui.show_warnings(study.skipped + study.result.warnings)

# -- manage runs -----------------------------------------------------------------------------
if all_paths:
    with st.expander("Manage runs: hide, rename, delete"):
        name_of = {str(r.path.resolve()): label for label, r in ui.all_runs(data_dir)[0].items()}
        options = [str(p.resolve()) for p in all_paths]

        def describe(path: str) -> str:
            return name_of.get(path) or f"{Path(path).name} (unreadable)"

        ui.hidden_runs_picker(options, describe)
        c1, c2 = st.columns(2)
        readable = [p for p in options if p in name_of]
        target = c1.selectbox("Rename run", readable, format_func=describe, key="rename_target")
        new_name = c1.text_input("New name (stored in the run file)", key="rename_name")
        if c1.button("Rename", disabled=not readable) and target:
            ui.act(jobs.rename_run, target, new_name, done=f"renamed {describe(target)} to {new_name.strip()}")

        doomed = c2.selectbox("Delete run file", options, format_func=describe, key="delete_target")
        sure = c2.checkbox("Yes, delete this file from disk for good", key="delete_sure")
        if c2.button("Delete", disabled=not sure) and doomed:
            ui.act(jobs.delete_run, doomed, done=f"deleted {doomed}", reset=["delete_sure"])

# -- load a run file -------------------------------------------------------------------------
with st.expander("Load a run file"):
    typed = st.text_input("Path of a run file (.h5), or of a directory holding some, to copy into the data directory")
    source = Path(typed.strip()).expanduser() if typed.strip() else None
    if source is not None and source.is_dir():
        found = sorted(p.name for p in source.glob("*.h5") if p.is_file())
        if found:
            source = source / st.selectbox(f"Run files in {source}", found)
        else:
            st.info(f"{source} is a directory with no .h5 file directly in it.")
    upload = st.file_uploader("or upload one", type=["h5"])
    if st.button("Load"):
        try:
            if upload is not None:
                name, data = upload.name, upload.getvalue()
            elif source is not None:
                name, data = read_run_source(source)
            else:
                raise UlvizError("give a path or upload a file")
            target = add_run_file(data_dir, name, data)
        except UlvizError as e:
            st.error(str(e))
        else:
            ui.flash(f"loaded {name} as {target}")
            st.rerun()

# -- launch a run ----------------------------------------------------------------------------
st.subheader("Launch a run")
LOCAL = [d for d in list_datasets() if d not in BUILT_IN_DATASETS]
with st.form("launch", enter_to_submit=False):  # Enter in a text box must not launch a job
    c1, c2, c3, c4 = st.columns(4)
    name = c1.text_input("Run name", "my-run")
    dataset = c1.selectbox("Dataset", list_datasets())
    dataset_dir = c1.text_input("Dataset files (directory, or .npz file)", "",
                                help=f"Only for the datasets read from local files ({', '.join(LOCAL)}); "
                                     "CIFAR in its binary layout (the pickle layout is refused here). The "
                                     "bundled CIFAR-10 subset: data/cifar10-subset.")
    train_limit = c1.number_input("Training samples (0 = all)", 0, 10_000_000, 0, step=500)
    model = c1.selectbox("Model", list_models(), index=list_models().index("lenet5"))
    method = c2.selectbox("Unlearnable method", [m for m in list_methods() if m != "import"])
    params_text = c2.text_input("Method parameters (key=value, comma-separated)", "",
                                help="e.g. mode=class, eps=0.0627; defaults: " + "; ".join(
                                    f"{m}: {', '.join(method_info(m).defaults) or '-'}" for m in list_methods()))
    ratio = c2.slider("Poison ratio", 0.0, 1.0, 1.0, 0.05)
    recipe = c3.selectbox("Training recipe", ["default"] + list_recipes(),
                          format_func=lambda r: "the dataset's (paper on CIFAR, quick elsewhere)" if r == "default" else r,
                          help="quick: SGD lr 0.05, cosine, batch 64, no augmentation. paper: SGD lr 0.1, constant, "
                               "batch 128, crop + flip on natural images (the papers' training).")
    lr = c3.number_input("Learning rate (0 = the recipe's)", 0.0, 10.0, 0.0, step=0.01, format="%.4f")
    batch = c3.number_input("Batch size (0 = the recipe's)", 0, 8192, 0)
    augment = c3.selectbox("Augmentation", ["recipe"] + list(AUGMENTATIONS),
                           format_func=lambda a: "the recipe's" if a == "recipe" else a)
    epochs = c4.number_input("Epochs", 1, 500, 10)
    seed = c4.number_input("Seed", 0, 1_000_000, 0)
    sal = c4.selectbox("SAL after every epoch", ["fast", "exact", "none"],
                       help="fast: cheap on any dataset (the default, as in `ulviz train`); exact: the paper's "
                            "search, slow on natural images; none: no SAL (the run misses the SAL and UD pages). "
                            "Compare UD only between runs of one estimator.")
    submitted = st.form_submit_button("Launch")
if submitted:
    try:
        config = launch_config(name, dataset, model, method, params_text=params_text, ratio=ratio, epochs=epochs,
                               seed=seed, sal=sal, recipe=None if recipe == "default" else recipe, lr=lr or None,
                               batch_size=int(batch) or None, augment=None if augment == "recipe" else augment,
                               dataset_dir=dataset_dir, train_limit=int(train_limit) or None)
        job = jobs.launch(config)
        st.success(f"launched {job.name} ({job.state}); it writes {job.out}")
    except UlvizError as e:
        st.error(str(e))


# -- launch a sweep ----------------------------------------------------------------------------
EXAMPLE_SWEEP = """out = "../runs/my-sweep"   # relative to this file, kept as <data dir>/sweeps/NAME.toml
[base]                     # a run config, as `ulviz train --config` JSON
data = { name = "digits" }
model = { name = "lenet5" }
train = { epochs = 10 }
sal = { estimator = "fast" }
[axes]                     # dotted config field -> values; the runs are their product
"poison.method" = ["clean", "random", "lsp"]
"train.seed" = [0, 1]
"""
with st.expander("Launch a sweep: many runs from one sweep file"):
    with st.form("sweep", enter_to_submit=False):
        upload = st.file_uploader("Sweep file (.toml)", type=["toml"], key="sweep_upload")
        text = st.text_area("... or type it here", EXAMPLE_SWEEP, height=260, key="sweep_text")
        c1, c2 = st.columns(2)
        sweep_name = c1.text_input("Sweep name", "my-sweep")
        parallel = c2.number_input("Runs at a time", 1, 64, 1, help="each run is its own process; on a small machine "
                                                                      "keep this at 1 (runs already use every core)")
        go = st.form_submit_button("Launch the sweep")
    st.caption("Runs already complete are skipped and interrupted ones resumed, so launching a finished sweep again "
               "only does what is left. For a Ray cluster: `ulviz sweep FILE --executor ray --address auto`.")
if go:
    source = upload.getvalue().decode("utf-8", errors="replace") if upload is not None else text
    try:
        job = jobs.launch_sweep(source, sweep_name, int(parallel))
        st.success(f"launched the sweep {job.name} ({job.config['runs']} runs into {job.out})")
    except UlvizError as e:
        st.error(str(e))


# -- jobs --------------------------------------------------------------------------------------
@st.fragment(run_every=2.0)  # follows running jobs by rereading their run files; the jobs only write
def show_jobs():
    all_jobs = jobs.poll()
    # a job that ended since the last look: rerun the whole page, so the runs table, the chart and
    # the UD table above (outside this fragment) show its run without a reload. Noted also when
    # there are no jobs yet: a short job may start and end between two looks
    ended = {j.id for j in all_jobs if j.state != "queued" and not (j.state == "started" and j.alive())}
    seen = st.session_state.get("_ended_jobs")
    st.session_state["_ended_jobs"] = ended
    if seen is not None and ended - seen:
        st.rerun(scope="app")
    if not all_jobs:
        return
    head, clear = st.columns([6, 1])
    head.subheader("Jobs")
    if clear.button("Clear finished jobs", help="Forget the jobs that are not queued or running "
                                                "(their run files stay)."):
        jobs.clear_finished()
        all_jobs = jobs.jobs()
    for job in reversed(all_jobs[-10:]):
        show_job(job)


def show_sweep(job):
    running = job.state == "started" and job.alive()
    rows = ui.guard(sweep_progress, job.config["sweep"])
    cols = st.columns([3, 5, 1])
    state = "waiting to start" if job.state == "queued" else ("running" if running else job.state)
    if rows is None:
        cols[0].markdown(f"**{job.name}** · sweep · {state}")
        return
    done = sum(r["state"] == "complete" for r in rows)
    cols[0].markdown(f"**{job.name}** · sweep of {len(rows)} runs · {state if running or job.state != 'started' else 'ended'}")
    cols[1].progress(done / max(len(rows), 1), text=status_line(rows))
    if (running or job.state == "queued") and cols[2].button("Cancel", key=f"cancel-{job.id}"):
        jobs.cancel(job.id)
        st.rerun()
    if job.state == "started" and not running and any(r["state"] == "failed" for r in rows):
        st.error(f"{job.name}: some runs failed; last lines of its log\n\n```\n{job.log_tail()}\n```")


def show_job(job):
    if job.kind == "sweep":
        return show_sweep(job)
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
    name = run.name if run is not None else job.name  # the run's own name: a rename shows here too
    cols[0].markdown(f"**{name}** · {job.config['poison']['method']} · {status}")
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
