import os
from pathlib import Path

import pytest
import torch

from ulviz import DataConfig, ModelConfig, RunConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ULVIZ_SHARED_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_config(**train) -> RunConfig:
    """A run that trains in about a second: synthetic data, a small MLP."""
    t = dict(epochs=3, batch_size=32, lr=0.1, seed=0, device="cpu")
    t.update(train)
    return RunConfig(name="tiny", data=DataConfig("synthetic"), model=ModelConfig("mlp", width=32),
                     train=TrainConfig(**t))


@pytest.fixture
def mnist_dir():
    d = SHARED_DATA / "mnist-t10k"
    if not (d / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST test set not found at {d}")
    return d


def same_history(a, b):
    """Histories equal in every metric but wall-clock seconds (NaN equal to NaN)."""
    import math
    return len(a) == len(b) and all(
        all(x[k] == y[k] or (math.isnan(x[k]) and math.isnan(y[k])) for k in x if k != "seconds")
        for x, y in zip(a, b))


@pytest.fixture(autouse=True)
def poison_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Generated poisons go to the session's temporary directory, never the user's ~/.cache."""
    monkeypatch.setenv("ULVIZ_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "poison-cache"))
