"""The per-layer sharpness atlas, each measure against an independent computation on a tiny model."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian
from torch.nn import functional as F

from conftest import tiny_config
from ulviz import open_run, train
from ulviz.core.errors import UlvizError
from ulviz.measure.sharpness import (SharpnessConfig, adaptive_sharpness, compute_run_sharpness, hutchinson_trace,
                                     layer_sharpness, run_data, sal_correlations, atlas_frames, spearman,
                                     top_eigenvalue)
from ulviz.store.analyses import read_sharpness


def tiny_model_and_data(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(40, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    return model, x, y


def full_hessian(model, x, y, name):
    """The Hessian of the mean loss w.r.t. one weight, flattened, by torch.func.hessian."""
    frozen = {k: v.detach() for k, v in model.named_parameters()}
    w0 = frozen[name]

    def loss(flat):
        return F.cross_entropy(functional_call(model, {**frozen, name: flat.view_as(w0)}, (x,)), y)
    return hessian(loss)(w0.flatten()).numpy()


EXACT = SharpnessConfig(measures=("eig", "trace"), subset=None, batch_size=16, power_iters=2000, tol=1e-12,
                        probes=4000)


@pytest.mark.parametrize("name", ["0.weight", "2.weight"])
def test_top_eigenvalue_matches_the_full_hessian(name):
    model, x, y = tiny_model_and_data()
    h = full_hessian(model, x, y, name)
    eig = np.linalg.eigvalsh(h)
    dominant = eig[np.argmax(np.abs(eig))]
    got = layer_sharpness(model, (x, y), replace(EXACT, measures=("eig",)), layers=[name], device="cpu")
    # batches of 16 (three of them, one short): the weighted sum is the mean loss over all 40
    assert got["eig"][name] == pytest.approx(dominant, rel=1e-6)


@pytest.mark.parametrize("name", ["0.weight", "2.weight"])
def test_hutchinson_trace_matches_the_full_hessian_within_its_spread(name):
    model, x, y = tiny_model_and_data()
    h = full_hessian(model, x, y, name)
    off = h - np.diag(np.diag(h))
    # z.Hz = tr H + sum_{i != j} H_ij z_i z_j: its variance is 2 * sum_{i != j} H_ij^2 for Rademacher z
    std = math.sqrt(2 * (off ** 2).sum() / EXACT.probes)
    got = layer_sharpness(model, (x, y), replace(EXACT, measures=("trace",)), layers=[name], device="cpu")
    assert abs(got["trace"][name] - np.trace(h)) < 5 * std + 1e-12
    assert std < 0.2 * abs(np.trace(h))  # the check has teeth: the spread is small beside the trace


def test_hutchinson_is_exact_on_a_diagonal_operator_and_power_iteration_finds_a_negative_one():
    d = torch.tensor([[-5.0, 1.0], [2.0, 0.5]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    assert hutchinson_trace(lambda v: d * v, d, 3, g) == pytest.approx(-1.5)  # z_i^2 = 1: exact
    assert top_eigenvalue(lambda v: d * v, d, 500, 1e-12, g) == pytest.approx(-5.0)  # largest |lambda|, its sign


def test_adaptive_sharpness_of_a_linear_loss_is_the_scaled_gradient_norm():
    # L(w) = c.w: the max of c.d over ||d / |w|| <= rho is rho * || |w| * c || (Cauchy-Schwarz)
    w0 = torch.tensor([0.5, -2.0, 0.0, 1.0], dtype=torch.float64)
    c = torch.tensor([1.0, 0.3, 5.0, -2.0], dtype=torch.float64)
    got = adaptive_sharpness(lambda w: float(c @ w), lambda w: c, w0, rho=0.1, steps=3)
    assert got == pytest.approx(0.1 * float(torch.linalg.norm(w0.abs() * c)), rel=1e-12)
    # the third weight is 0: a |w|-scaled ball cannot move it, however large its gradient; eta can
    with_eta = adaptive_sharpness(lambda w: float(c @ w), lambda w: c, w0, rho=0.1, steps=3, eta=1.0)
    assert with_eta == pytest.approx(0.1 * float(torch.linalg.norm((w0.abs() + 1.0) * c)), rel=1e-12)


def test_adaptive_sharpness_against_a_brute_force_search_of_the_scaled_ball():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(1, 2, bias=False)).double()  # a 2-element weight: the ball is an ellipse
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.5], [-0.7]]))
    x = torch.randn(30, 1, dtype=torch.float64)
    y = (x[:, 0] > 0.2).long()
    rho = 0.3
    cfg = SharpnessConfig(measures=("adaptive",), subset=None, rho=rho, ascent_steps=20)
    got = layer_sharpness(model, (x, y), cfg, device="cpu")["adaptive"]["0.weight"]
    w0 = model[0].weight.detach()

    def loss(w):
        return F.cross_entropy(x @ w.T, y).item()
    r, t = np.meshgrid(np.linspace(0, rho, 121), np.linspace(0, 2 * np.pi, 721))
    brute = max(loss(w0 + w0.abs() * torch.tensor([[a], [b]], dtype=torch.float64))
                for a, b in zip((r * np.cos(t)).ravel(), (r * np.sin(t)).ravel())) - loss(w0)
    assert brute > 0.01
    assert got <= brute + 1e-6  # never above the true maximum (a grid point may sit a hair below it)
    assert got == pytest.approx(brute, rel=1e-3)


def test_norms_by_hand_and_the_callers_model_is_untouched():
    model = nn.Sequential(nn.Linear(2, 1, bias=False), nn.Linear(1, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 4.0]]))
        model[1].weight.copy_(torch.tensor([[1.0], [2.0]]))
    init = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    init["1.weight"] = torch.tensor([[1.0], [0.0]])
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    got = layer_sharpness(model, (x, y), SharpnessConfig(), init=init, device="cpu")
    assert got["norm"] == pytest.approx({"0.weight": 5.0, "1.weight": math.sqrt(5)})
    assert got["dist_init"] == pytest.approx({"0.weight": 5.0, "1.weight": 2.0})
    assert set(got) == {"eig", "trace", "adaptive", "norm", "dist_init"}
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_settings_are_one_line():
    model, x, y = tiny_model_and_data()
    with pytest.raises(UlvizError, match="unknown sharpness measure 'curv'"):
        layer_sharpness(model, (x, y), SharpnessConfig(measures=("curv",)))
    with pytest.raises(UlvizError, match="rho must be greater than 0"):
        layer_sharpness(model, (x, y), SharpnessConfig(rho=0.0))
    with pytest.raises(UlvizError, match="initial weights"):
        layer_sharpness(model, (x, y), SharpnessConfig(measures=("dist_init",)))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("sharp") / "run.h5"
    train(replace(tiny_config(epochs=3), poison=replace(tiny_config().poison, method="random",
                                                          params={"mode": "class", "eps": 0.2})), path)
    return path


def test_run_sharpness_is_stored_per_epoch_from_the_training_data_and_resumes(tiny_run, monkeypatch):
    import ulviz.measure.sharpness as sh
    cfg = SharpnessConfig(subset=64, power_iters=5, probes=2)
    sharp = compute_run_sharpness(tiny_run, cfg, epochs=[1, 3], device="cpu")
    run = open_run(tiny_run)
    assert set(sharp) == set(cfg.measures) and list(sharp["eig"]["epochs"]) == [1, 3]
    assert sharp["eig"]["values"].shape == (2, len(run.layer_names))
    # the stored row is layer_sharpness of that epoch's snapshot on the (protected) data it trained on
    model = sh.build_model(run.config, run_data(run, True))
    model.load_state_dict(run.snapshot(3))
    d = run_data(run, protected=True)
    direct = layer_sharpness(model, (d.x_train, d.y_train), cfg, init=run.snapshot(0), device="cpu")
    for m in cfg.measures:
        assert np.allclose(sharp[m]["values"][1], [direct[m][n] for n in run.layer_names], rtol=1e-9, atol=1e-12)
    clean = run_data(run, protected=False)
    assert not torch.equal(d.x_train, clean.x_train)  # and that data is the protected one
    # resumed: only epoch 2 is computed; a changed setting redoes only the measure it concerns
    calls = []
    real = sh.layer_sharpness
    monkeypatch.setattr(sh, "layer_sharpness", lambda *a, **k: calls.append(a[2].measures) or real(*a, **k))
    compute_run_sharpness(tiny_run, cfg, epochs=[1, 2, 3], device="cpu")
    assert len(calls) == 1
    calls.clear()
    again = compute_run_sharpness(tiny_run, replace(cfg, rho=0.1), epochs=[1, 2, 3], device="cpu")
    assert calls == [("adaptive",)] * 3
    assert list(again["eig"]["epochs"]) == [1, 2, 3] and again["adaptive"]["settings"]["rho"] == 0.1
    assert read_sharpness(tiny_run)["trace"]["values"].shape == (3, len(run.layer_names))


def test_run_sharpness_refuses_an_untrained_epoch(tiny_run):
    with pytest.raises(UlvizError, match="no trained epoch 9"):
        compute_run_sharpness(tiny_run, SharpnessConfig(measures=("norm",)), epochs=[9])


def test_spearman_and_the_correlation_table():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share average ranks: ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4), Pearson of the ranks
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1.5, 1.5, 3, 4], [1, 2, 3, 4])[0, 1])
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    import pandas as pd
    layers = ["a", "b", "c"]
    sal = pd.DataFrame([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], index=pd.Index([2, 4], name="epoch"), columns=layers)
    frames = atlas_frames({"eig": {"epochs": np.array([2, 4, 6]), "values": np.array(
        [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [9.0, 9.0, 9.0]])}}, layers)
    table = sal_correlations(frames, sal).set_index("measure")
    assert table.loc["eig", "epochs"] == 2  # epoch 6 has no SAL
    assert table.loc["eig", "rho_per_epoch"] == pytest.approx(0.0)  # +1 at epoch 2, -1 at epoch 4
