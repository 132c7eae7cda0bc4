"""The demo studies: one model trained clean and under each unlearnable method, with exact SAL and
cached landscapes, so the dashboard opens on a finished study. `ulviz demo` regenerates them and
doubles as an end-to-end smoke test of the whole pipeline (data, poison, training, SAL, run files,
landscapes, UD).

- ``cifar10`` (the bundled one, ``data/demo``): the regime of the papers. The papers' ResNet-18
  at width 4 (44k weights: sixteen snapshots of ten runs fit the repository) on the bundled
  CIFAR-10 subset (``data/cifar10-subset``, 5085 / 1017 images) with the paper recipe, 16 epochs,
  clean and under every method that works there (see ``benchmarks/poison_effect.py``; ar is left
  out: at this width and length the network does not learn its shortcut, so it protects nothing
  here; the poison benchmark saw it work at width 8 over 40 epochs). A smaller
  plain conv net with global pooling (``cnn``) was tried first and learned neither the clean task
  nor the position-bound shortcuts (lsp, ops) in 16 epochs. Exact SAL is measured on a fixed
  subset, the first 128 training images of each run (protected where the run's are), at epochs
  2, 4, 8, 12 and 16: exact SAL of 21 layers costs about three training epochs per measured epoch
  even on 128 images (layers x rounds x two copies x passes is inherent to the search), and the
  whole demo has to fit in an hour on 2 cores.
  The surrogate-based methods (em, tap, rem) are crafted with a resnet18 of width 8 and the
  smaller CPU settings of :data:`CPU_POISON_SETTINGS`; the victim is a different network, so
  they are judged by transfer, as in the papers' cross-architecture tables.
- ``digits`` (``ulviz demo --study digits``, written to ``data/demo-digits``): lenet5 on the 8x8
  scikit-learn digits, exact SAL on every training image after every epoch; minutes on a CPU,
  for teaching. Digits are too small for several methods to work (see the README).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.config import DataConfig, ModelConfig, PoisonConfig, RunConfig, SALConfig, TrainConfig
from ..core.errors import UlvizError, UnknownNameError
from ..data.recipes import apply_recipe

DATA_ROOT = Path(__file__).resolve().parents[2] / "data"  # the checkout's data/ (this file is ulviz/studies/demo.py)
DEMO_DIR = DATA_ROOT / "demo"  # the bundled study, read-only for the dashboard

# What two CPU cores afford for the surrogate-based methods (the originals' budgets are GPU-hours
# on 50,000 images). benchmarks/poison_effect.py uses the same settings; the demo's runs show they work.
CPU_POISON_SETTINGS = {
    # per round an epoch of surrogate training (the original's 0.1 epoch is 1 step on the subset,
    # which needs ten times the rounds, each a 20-step pass over every sample)
    "em": {"max_rounds": 10, "train_fraction": 1.0},
    "tap": {"steps": 100, "step": 1 / 255},  # the same total travel as the original's 250 steps of 0.4/255
    "rem": {"train_epochs": 2, "samples": 1, "pgd_steps": 5, "rho_steps": 3},
}
SURROGATE = {"surrogate": "resnet18", "surrogate_width": 8}  # the crafting network of em, tap, rem


@dataclass(frozen=True)
class Study:
    base: RunConfig  # the clean run; every other run differs from it only in its protection
    methods: dict[str, PoisonConfig]  # run name -> protection ("clean" first)
    sal: SALConfig  # how SAL is measured, post hoc on the stored snapshots
    sal_at: tuple[int, ...] | None  # the epochs SAL is measured at (None = every epoch)
    landscapes: list[tuple[str, dict]] = field(default_factory=list)  # (kind, settings) cached in each run
    out: Path = DEMO_DIR  # where `ulviz demo --study NAME` writes by default
    tasks: dict = field(default_factory=dict)  # other task -> the runs also trained on it (cross-task page)

    def sal_epochs(self, epochs: int) -> list[int]:
        every = range(1, epochs + 1)
        return list(every) if self.sal_at is None else [e for e in self.sal_at if e in every]


def _cifar10() -> Study:
    data = DataConfig("cifar10", data_dir="data/cifar10-subset")  # relative to the project root
    train = apply_recipe(TrainConfig(epochs=16, seed=0, device="cpu"), "paper", "cifar10")
    methods = {
        "clean": PoisonConfig("clean"),
        "random": PoisonConfig("random"),
        "lsp": PoisonConfig("lsp"),
        "ops": PoisonConfig("ops"),
        # no "ar": this network does not pick up its shortcut in 16 epochs (measured: 0.45 clean-test
        # accuracy against the clean run's 0.47); at width 8 over 40 epochs poison_effect.py saw it work
        "cuda": PoisonConfig("cuda"),
        "em-class": PoisonConfig("em", params={"mode": "class", **SURROGATE}),
        "em": PoisonConfig("em", params={**SURROGATE, **CPU_POISON_SETTINGS["em"]}),
        "tap": PoisonConfig("tap", params={**SURROGATE, **CPU_POISON_SETTINGS["tap"]}),
        "rem": PoisonConfig("rem", params={**SURROGATE, **CPU_POISON_SETTINGS["rem"]}),
    }
    # landscapes on the first 128 clean test images: a 21x21 plane of this network is ~15 s on 2 cores
    lands = [("plane", dict(resolution=21, subset=128)), ("line", dict(resolution=41, subset=128)),
             ("interp", dict(resolution=41, subset=128))]
    # the paper's opening finding on the Cross-task page: the protections that bite on
    # classification, trained on rotation prediction instead (no SAL or landscapes: scores and probes)
    rotation = ("clean", "em-class", "lsp", "ops")
    return Study(RunConfig(name="clean", data=data, model=ModelConfig("resnet18", 4), train=train),
                 methods, SALConfig(estimator="exact", subset=128), (2, 4, 8, 12, 16), lands, DEMO_DIR,
                 {"rotation": rotation})


def _digits() -> Study:
    methods = {
        "clean": PoisonConfig("clean"),
        "random": PoisonConfig("random", params={"mode": "sample"}),
        "em-sample": PoisonConfig("em", params={"mode": "sample"}),
        "em-class": PoisonConfig("em", params={"mode": "class"}),
        "lsp": PoisonConfig("lsp"),
        "ops": PoisonConfig("ops"),
        "ar": PoisonConfig("ar"),
        "cuda": PoisonConfig("cuda"),
    }
    lands = [("plane", dict(resolution=21)), ("line", dict(resolution=41)), ("interp", dict(resolution=41))]
    return Study(RunConfig(name="clean", data=DataConfig("digits"), model=ModelConfig("lenet5"),
                           train=TrainConfig(epochs=30, seed=0, device="cpu")),
                 methods, SALConfig(estimator="exact"), None, lands, DATA_ROOT / "demo-digits")


STUDIES = {"cifar10": _cifar10, "digits": _digits}


def list_studies() -> list[str]:
    return list(STUDIES)


def demo_study(name: str = "cifar10") -> Study:
    if name not in STUDIES:
        raise UnknownNameError("demo study", name, list_studies())
    return STUDIES[name]()


def on_device(s: Study, device: str | None) -> Study:
    """The study trained on `device` (None: as it is, the CPU). On a GPU its SAL is the paper's
    measurement, exact after every epoch on the whole training set: the CPU study's 128 images at
    five epochs are what two cores afford in an hour (about 30 minutes on one H200, issue 26)."""
    if device is None:
        return s
    s = replace(s, base=replace(s.base, train=replace(s.base.train, device=str(device))))
    if str(device).startswith("cuda"):
        s = replace(s, sal=replace(s.sal, estimator="exact", subset=None), sal_at=None)
    return s


def demo_configs(study: str = "cifar10", epochs: int | None = None, methods: list[str] | None = None,
                 device: str | None = None) -> list[RunConfig]:
    """The study's run configs: clean first, then `methods` (default: all of the study's)."""
    s = on_device(demo_study(study), device)
    names = ["clean"] + [m for m in (methods or s.methods) if m != "clean"]
    unknown = [n for n in names if n not in s.methods]
    if unknown:
        raise UnknownNameError("demo run", unknown[0], list(s.methods))
    base = s.base if epochs is None else replace(s.base, train=replace(s.base.train, epochs=epochs))
    configs = [replace(base, name=name, poison=s.methods[name]) for name in names]
    for task, runs in s.tasks.items():
        configs += [replace(base, name=name, poison=s.methods[name], train=replace(base.train, task=task))
                    for name in runs if name in names]
    return configs


def run_stem(config: RunConfig) -> str:
    """A demo run's file stem: its name, prefixed by its task when that is not classification."""
    return config.name if config.train.task == "classify" else f"{config.train.task}-{config.name}"


def make_demo(out: str | Path | None = None, epochs: int | None = None, progress: bool = True,
              methods: list[str] | None = None, study: str = "cifar10", device: str | None = None,
              only: list[str] | None = None) -> list[Path]:
    """Train every run of `study` into `out` (default: the study's directory, replacing earlier
    files), measure its SAL and cache its landscapes; returns the classification run files, clean
    first. `only` (file stems, e.g. em-class, rotation-ops) remakes just those runs; the others,
    the clean run above all, must be there already.
    `device` trains and measures there (see :func:`on_device`: on a GPU, SAL every epoch on the
    whole training set)."""
    from ..measure.landscape.runs import run_landscape
    from ..measure.sal_runs import compute_run_sal
    from ..training.loop import train

    s = on_device(demo_study(study), device)
    out = Path(out) if out is not None else s.out
    out.mkdir(parents=True, exist_ok=True)  # the study owns this directory
    configs = demo_configs(study, epochs, methods, device)
    unknown = sorted(set(only or ()) - {run_stem(c) for c in configs})
    if unknown:
        raise UnknownNameError("demo run", unknown[0], [run_stem(c) for c in configs])
    paths, made, clock = [], [], _Clock(progress)
    for config in configs:
        path = out / f"{run_stem(config)}.h5"
        if config.train.task == "classify":
            paths.append(path)
        if only is not None and run_stem(config) not in only:
            if not path.exists():
                raise UlvizError(f"{path}: not there; remake it too (--only {run_stem(config)})")
            continue
        clock.say(f"{run_stem(config)}: poison and train -> {path}")
        train(config, path, overwrite=True, progress=progress)
        made.append(path)
        if config.train.task != "classify":
            continue
        clock.say(f"{config.name}: SAL at epochs {s.sal_epochs(config.train.epochs)}")
        compute_run_sal(path, s.sal, epochs=s.sal_epochs(config.train.epochs), device=device)
    clean = paths[0]
    for path in (p for p in paths if p in made):
        clock.say(f"{path.stem}: landscapes")
        for kind, settings in s.landscapes:
            run_landscape(path, kind, **settings)
        subset = dict(s.landscapes).get("plane", {}).get("subset")
        if path != clean:  # the paths page's plane and the clean final -> this run's final weights
            run_landscape(clean, "pca", resolution=21, subset=subset, other=path)
            run_landscape(clean, "interp", resolution=41, subset=subset, other=path)
    clock.say("done")
    return paths


class _Clock:
    """Progress lines with the minutes since the start (the demo's cost is part of its story)."""

    def __init__(self, on: bool):
        self.on, self.start = on, time.perf_counter()

    def say(self, text: str) -> None:
        if self.on:
            print(f"demo [{(time.perf_counter() - self.start) / 60:5.1f} min] {text}", flush=True)
