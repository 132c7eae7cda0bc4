"""The bundled demo study: the same lenet5 on digits, clean and under each available
unlearnable method, with exact SAL after every epoch. `ulviz demo` regenerates it, and doubles as
an end-to-end smoke test of the whole pipeline (data, poison, training, SAL, run files, UD)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .config import DataConfig, ModelConfig, PoisonConfig, RunConfig, SALConfig, TrainConfig
from .errors import UnknownNameError

DEMO_DIR = Path(__file__).resolve().parent.parent / "data" / "demo"

# name -> protection; every run shares the model, seed and hyperparameters of the clean run
DEMO_METHODS: dict[str, PoisonConfig] = {
    "clean": PoisonConfig("clean"),
    "random": PoisonConfig("random", params={"mode": "sample"}),
    "em-sample": PoisonConfig("em", params={"mode": "sample"}),
    "em-class": PoisonConfig("em", params={"mode": "class"}),
    "lsp": PoisonConfig("lsp"),
    "ops": PoisonConfig("ops"),
    "ar": PoisonConfig("ar"),
    "cuda": PoisonConfig("cuda"),
}
# cached with every run so the landscape and path pages open at once: (kind, settings)
DEMO_LANDSCAPES = [("plane", dict(resolution=21)), ("pca", dict(resolution=21)), ("line", dict(resolution=41))]


def demo_configs(epochs: int = 30, methods: list[str] | None = None) -> list[RunConfig]:
    """The demo's run configs: clean first, then `methods` (default: all of DEMO_METHODS)."""
    names = ["clean"] + [m for m in (methods or DEMO_METHODS) if m != "clean"]
    unknown = [n for n in names if n not in DEMO_METHODS]
    if unknown:
        raise UnknownNameError("demo run", unknown[0], list(DEMO_METHODS))
    base = RunConfig(name="clean", data=DataConfig("digits"), model=ModelConfig("lenet5"),
                     train=TrainConfig(epochs=epochs, seed=0, device="cpu"), sal=SALConfig(estimator="exact"))
    return [replace(base, name=name, poison=DEMO_METHODS[name]) for name in names]


def make_demo(out: str | Path = DEMO_DIR, epochs: int = 30, progress: bool = True,
              methods: list[str] | None = None) -> list[Path]:
    """Train every demo run into `out` (replacing earlier files); returns their paths."""
    from .training import train

    out = Path(out)
    paths = []
    for config in demo_configs(epochs, methods):
        path = out / f"{config.name}.h5"
        if progress:
            print(f"demo: {config.name} -> {path}")
        train(config, path, overwrite=True, progress=progress)
        paths.append(path)
    from .landscape import run_landscape
    for path in paths:
        for kind, settings in DEMO_LANDSCAPES:
            run_landscape(path, kind, **settings)
        if path != paths[0]:  # clean final -> this run's final weights
            run_landscape(paths[0], "interp", resolution=41, other=path)
    return paths
