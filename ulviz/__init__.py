"""ulviz: why unlearnable examples stop a network from learning, and how far from truly unlearnable they are.

The public API (everything else is internal)::

    from ulviz import RunConfig, train, open_run, load_dataset, create_model
    from ulviz import layer_sal, unlearnable_distance, plane, line, run_landscape, pca_plane
    from ulviz import ToyConfig, lesson      # the teaching page's two-weight model, exactly
    from ulviz import list_tasks, linear_probe  # other tasks on protected images; class info in features
    from ulviz import list_defenses, defense_study  # the trainer's defenses; protection x defense tables
    from ulviz import layer_sharpness, compute_run_sharpness, layer_surgery  # the per-layer atlas; layer surgery
    from ulviz import verify_run                     # does a run file reproduce here (inputs, first epochs)

Each name is re-exported from the module that defines it, the imports below in the order of the
layers (core, data, store, models, protect, measure, training, studies, app; see
tests/test_architecture.py). The facade defines nothing itself, and nothing in the package
imports it; no public name hides a sub-package (``ulviz.train`` is the function, the layer is
``ulviz.training``).
"""
from .core.config import DataConfig, ModelConfig, PoisonConfig, RunConfig, SALConfig, TrainConfig
from .core.devices import select_device
from .core.errors import DataError, DivergedError, RunFileError, UlvizError, UnknownNameError
from .core.provenance import __version__
from .data.datasets import Dataset, list_datasets, load_dataset
from .data.tasks import list_tasks
from .store.runs import Run, find_runs, open_run
from .models.registry import create_model, list_models, weight_layer_names
from .protect.defenses import list_defenses
from .protect.poisons import list_methods, make_poison
from .measure.landscape.runs import run_landscape
from .measure.landscape.surfaces import interpolation, line, plane
from .measure.probe import linear_probe
from .measure.sal import layer_sal
from .measure.sharpness import SharpnessConfig, compute_run_sharpness, layer_sharpness
from .measure.surgery import SurgeryConfig, layer_surgery, select_layers
from .measure.trajectory import divergence, pca_plane
from .measure.ud import unlearnable_distance
from .training.loop import EpochContext, TrainResult, evaluate, resume, train
from .training.verify import verify_run
from .studies.defense_study import defense_study
from .app.teaching import ToyConfig, lesson

__all__ = [
    "__version__",
    "DataConfig", "ModelConfig", "PoisonConfig", "RunConfig", "SALConfig", "TrainConfig",
    "Dataset", "list_datasets", "load_dataset",
    "select_device",
    "DataError", "DivergedError", "RunFileError", "UlvizError", "UnknownNameError",
    "create_model", "list_models", "weight_layer_names",
    "list_methods", "make_poison",
    "Run", "find_runs", "open_run",
    "EpochContext", "TrainResult", "evaluate", "resume", "train",
    "layer_sal", "unlearnable_distance",
    "interpolation", "line", "plane", "run_landscape",
    "divergence", "pca_plane",
    "ToyConfig", "lesson",
    "list_tasks", "linear_probe",
    "list_defenses", "defense_study",
    "SharpnessConfig", "compute_run_sharpness", "layer_sharpness",
    "SurgeryConfig", "layer_surgery", "select_layers",
    "verify_run",
]
