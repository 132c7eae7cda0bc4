import math

import pytest
import torch

from conftest import same_history, tiny_config
from ulviz import DataConfig, ModelConfig, RunConfig, TrainConfig, open_run, train
from ulviz.training.loop import build_model, epoch_order, lr_at  # build_model lives in ulviz.models.registry, re-exported


def _state_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_run_different_seed_differs():
    a = train(tiny_config(seed=3))
    b = train(tiny_config(seed=3))
    c = train(tiny_config(seed=4))
    assert _state_equal(a.model.state_dict(), b.model.state_dict())
    assert same_history(a.history, b.history)
    assert not _state_equal(a.model.state_dict(), c.model.state_dict())


def test_training_learns_and_history_matches_plain_evaluation():
    result = train(tiny_config(epochs=5))
    hist = result.history
    assert [r["epoch"] for r in hist] == list(range(6))
    assert hist[-1]["test_acc"] > 0.8 > hist[0]["test_acc"]
    # the stored test loss is the plain mean cross-entropy of the final model on the test set
    from ulviz import load_dataset
    ds = load_dataset("synthetic")
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(result.model.eval()(ds.x_test), ds.y_test).item()
    assert math.isclose(hist[-1]["test_loss"], ref, rel_tol=1e-5)


def test_lr_schedules():
    cfg = tiny_config(epochs=4, lr=0.1, schedule="cosine")
    assert [round(lr_at(cfg, e), 6) for e in (1, 2, 3, 4)] == [0.1, 0.085355, 0.05, 0.014645]
    cfg = tiny_config(epochs=4, lr=0.1, schedule="step")
    assert [round(lr_at(cfg, e), 6) for e in (1, 2, 3, 4)] == [0.1, 0.1, 0.01, 0.001]
    assert lr_at(tiny_config(schedule="constant", lr=0.3), 2) == 0.3


def test_epoch_order_is_a_function_of_seed_and_epoch():
    assert torch.equal(epoch_order(50, 1, 3)[0], epoch_order(50, 1, 3)[0])
    assert not torch.equal(epoch_order(50, 1, 3)[0], epoch_order(50, 1, 4)[0])
    assert sorted(epoch_order(50, 1, 3)[0].tolist()) == list(range(50))


def test_callbacks_see_every_epoch():
    seen = []
    train(tiny_config(epochs=2), callbacks=[lambda ctx: seen.append((ctx.epoch, ctx.metrics["epoch"]))])
    assert seen == [(0, 0), (1, 1), (2, 2)]


def test_diverging_run_stops_and_keeps_finished_epochs(tmp_path):
    path = tmp_path / "div.h5"
    # a huge learning rate sends the weights to inf within a few epochs
    result = train(tiny_config(epochs=20, lr=1e6, momentum=0.9, schedule="constant"), path)
    assert result.status == "diverged"
    run = open_run(path)
    assert run.status == "diverged" and run.message.startswith(f"diverged at epoch {len(run.metrics)}")
    assert len(run.metrics) == len(result.history) < 21


@pytest.mark.slow
def test_lenet5_on_digits_reaches_95_percent(tmp_path):
    cfg = RunConfig(name="clean", data=DataConfig("digits"), model=ModelConfig("lenet5"),
                    train=TrainConfig(epochs=30, seed=0, device="cpu"))
    result = train(cfg, tmp_path / "clean.h5")
    assert result.history[-1]["test_acc"] >= 0.95
    assert (tmp_path / "clean.h5").stat().st_size < 20e6


def test_initial_snapshot_is_the_seeded_init(tmp_path):
    cfg = tiny_config(epochs=1)
    train(cfg, tmp_path / "r.h5")
    from ulviz import load_dataset
    init = build_model(cfg, load_dataset("synthetic")).state_dict()
    assert _state_equal(open_run(tmp_path / "r.h5").snapshot(0), init)


def test_train_protects_the_dataset_it_is_given_once(tmp_path):
    """`train(dataset=...)` takes the *clean* set and protects it with config.poison: the images
    it trains on equal make_poison's output (a benchmark once passed the protected set and so
    trained on images protected twice)."""
    from dataclasses import replace as dc_replace
    from ulviz import PoisonConfig, load_dataset
    from ulviz.protect.poisons import make_poison
    seen = []
    cfg = dc_replace(tiny_config(epochs=1), poison=PoisonConfig("random", params={"mode": "sample", "eps": 0.1}))
    ds = load_dataset(cfg.data)
    train(cfg, callbacks=[lambda ctx: seen.append(ctx.dataset.x_train)], dataset=ds)
    assert torch.equal(seen[-1], make_poison(cfg.poison, ds).x_train)
