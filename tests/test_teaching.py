"""The teaching toy (ulviz.app.teaching): every number checked against an independent computation, and the page."""
import math
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from ulviz.app import plots
from ulviz.app.teaching import (ToyConfig, accuracy_along, expected_accuracy, gd_path, gradient, lesson, loss,
                                loss_surface, poison, toy_data, weight_sal, weight_sal_along, weight_sal_search)


@pytest.fixture(scope="module")
def data():
    return toy_data(ToyConfig())


def loop_loss(x, y, w1, w2):
    """The mean logistic loss written out point by point."""
    return sum(math.log1p(math.exp(-yi * (w1 * a + w2 * b))) for (a, b), yi in zip(x.tolist(), y.tolist())) / len(y)


def test_loss_surface_matches_a_plain_loop(data):
    w1, w2 = np.linspace(-3, 3, 7), np.linspace(-2, 2, 5)
    surface = loss_surface(data.x_poisoned, data.y, w1, w2)
    assert surface.shape == (7, 5)
    for i, j in [(0, 0), (6, 4), (3, 2), (1, 3), (5, 0)]:
        assert surface[i, j] == pytest.approx(loop_loss(data.x_poisoned, data.y, w1[i], w2[j]), rel=1e-12)


def test_loss_has_no_overflow_far_out(data):
    far = loss(data.x_clean, data.y, np.array([[500.0, -700.0], [-1e4, 1e4]]))
    assert np.all(np.isfinite(far)) and np.all(far > 10)


@pytest.mark.parametrize("w", [(-1.0, -1.0), (0.3, 2.0), (2.1, -0.04), (40.0, -30.0)])
def test_gradient_matches_autograd(data, w):
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    x, y = torch.from_numpy(data.x_poisoned), torch.from_numpy(data.y)
    torch.nn.functional.softplus(-y * (x @ wt)).mean().backward()
    np.testing.assert_allclose(gradient(data.x_poisoned, data.y, np.array(w)), wt.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_path_first_step_by_hand(data):
    start, lr = (-1.0, 0.5), 0.3
    path = gd_path(data.x_clean, data.y, start, lr, 4)
    assert path.shape == (5, 2)
    np.testing.assert_array_equal(path[0], start)
    g = [0.0, 0.0]  # d/dw_k of mean log(1 + exp(-y w.x)) = mean(-y x_k / (1 + exp(y w.x)))
    for (a, b), yi in zip(data.x_clean.tolist(), data.y.tolist()):
        s = 1 / (1 + math.exp(yi * (start[0] * a + start[1] * b)))
        g[0] -= yi * a * s / len(data.y)
        g[1] -= yi * b * s / len(data.y)
    np.testing.assert_allclose(path[1], [start[0] - lr * g[0], start[1] - lr * g[1]], rtol=1e-12)
    assert np.all(np.diff(loss(data.x_clean, data.y, path)) < 0)  # a small step on a convex loss always descends


def test_clean_descent_finds_the_bayes_weights():
    # two unit-noise Gaussians at ±m: log-odds are exactly 2 m x1, so logistic regression tends to w = (2m, 0)
    d = toy_data(ToyConfig(n=20_000, separation=1.0))
    w = gd_path(d.x_clean, d.y, (-1.0, -1.0), 1.0, 400)[-1]
    np.testing.assert_allclose(w, [2.0, 0.0], atol=0.08)


def test_accuracy_along_matches_the_gaussian_formula(data):
    path = np.array([[2.0, 0.0], [0.5, 2.0], [-1.0, -1.0], [1.0, 1.0]])
    acc = accuracy_along(path, data.x_test, data.y_test)
    expected = expected_accuracy(path, 1.0, 1.0)  # Phi(m w1 / |w|), independent of the sample
    np.testing.assert_allclose(acc, expected, atol=0.025)
    assert accuracy_along(np.zeros((1, 2)), data.x_test, data.y_test)[0] == 0.5  # w = 0: every point a coin flip
    assert expected[2] == pytest.approx(0.5 * (1 + math.erf(-1 / 2)), abs=1e-12)


def test_poison_touches_only_the_chosen_fraction_and_is_class_wise(data):
    rng = np.random.default_rng(3)
    for fraction in (0.0, 0.25, 0.6, 1.0):
        for kind in ("shift", "shortcut"):
            out, chosen = poison(data.x_clean, data.y, kind, 2.5, fraction, np.random.default_rng(rng.integers(99)))
            assert chosen.sum() == round(fraction * len(data.y))
            np.testing.assert_array_equal(out[~chosen], data.x_clean[~chosen])
            np.testing.assert_array_equal(out[:, 0], data.x_clean[:, 0])  # the true feature is never touched
            if kind == "shift":
                np.testing.assert_allclose((out - data.x_clean)[chosen, 1] * data.y[chosen], 2.5)
            else:
                np.testing.assert_array_equal(out[chosen, 1], 2.5 * data.y[chosen])
    with pytest.raises(ValueError):
        poison(data.x_clean, data.y, "blend", 1.0, 1.0, rng)


def test_toy_data_poisons_the_configured_points(data):
    assert data.poisoned.all() and data.x_clean.shape == data.x_poisoned.shape == (400, 2)
    np.testing.assert_array_equal(data.x_poisoned[:, 1], 3.0 * data.y)
    assert set(np.unique(data.y)) == {-1.0, 1.0} and (data.y == 1).sum() == 200


def dense_sal(x, y, w, i, eps, points=20_001):
    """The SAL parts of weight i by evaluating the loss at `points` evenly spaced values of the interval."""
    r = eps * abs(w[i])
    grid = np.repeat(np.asarray(w, float)[None], points, axis=0)
    grid[:, i] = np.linspace(w[i] - r, w[i] + r, points)
    values, base = loss(x, y, grid), loss(x, y, np.asarray(w, float))
    return values.max() - base, base - values.min()


@pytest.mark.parametrize("w", [(-1.0, -1.0), (0.34, 1.97), (2.16, -0.04), (0.7, 0.0)])
@pytest.mark.parametrize("which", ["x_clean", "x_poisoned"])
def test_exact_weight_sal_matches_dense_evaluation(data, w, which):
    x = getattr(data, which)
    exact = weight_sal(x, data.y, w, eps=0.05)
    for i in range(2):
        s_max, s_min = dense_sal(x, data.y, w, i, 0.05)
        # the ends are on the dense grid, so s_max agrees to rounding; an interior minimum can fall between
        # grid points, where the grid misses at most L'' (cell / 2)^2 / 2 < 1e-11 here (L'' < 1, cell ~ 1e-5)
        assert exact.s_max[i] == pytest.approx(s_max, rel=1e-9, abs=1e-15)
        assert s_min - 1e-13 <= exact.s_min[i] <= s_min + 1e-11
        assert exact.sal[i] == max(exact.s_max[i], exact.s_min[i])
    assert exact.sal[1] == 0 if w[1] == 0 else True  # a weight at 0 has a radius of 0


def test_weight_sal_by_hand():
    # one point (1, 0) of class +1: the loss is log(1 + exp(-w1)), decreasing and convex in w1, flat in w2
    x, y = np.array([[1.0, 0.0]]), np.array([1.0])
    f = lambda t: math.log1p(math.exp(-t))
    out = weight_sal(x, y, (2.0, 3.0), eps=0.1)
    assert out.s_max[0] == pytest.approx(f(1.8) - f(2.0), rel=1e-12)
    assert out.s_min[0] == pytest.approx(f(2.0) - f(2.2), rel=1e-12)
    assert out.sal[0] == out.s_max[0]  # convex and decreasing: going back costs more than going on gains
    assert out.sal[1] == 0.0


def test_weight_sal_at_the_minimum_is_the_curvature_term():
    # at the clean optimum the slope is 0: s_min = 0 and s_max = L'' r^2 / 2 up to a cubic term
    d = toy_data(ToyConfig(n=2000))
    w = gd_path(d.x_clean, d.y, (1.0, 0.1), 1.0, 3000)[-1]
    assert np.abs(gradient(d.x_clean, d.y, w)).max() < 1e-10
    m = (d.x_clean @ w) * d.y
    p = 1 / (1 + np.exp(-m))
    curvature = (p * (1 - p) * d.x_clean[:, 0] ** 2).mean()
    out = weight_sal(d.x_clean, d.y, w, eps=0.005)  # small radius: the cubic term is under 1% of the quadratic
    assert out.s_min[0] < 1e-15
    assert out.s_max[0] == pytest.approx(curvature * (0.005 * w[0]) ** 2 / 2, rel=0.01)


@pytest.mark.parametrize("w", [(-1.0, -1.0), (0.5, 1.0), (2.16, -0.04)])
def test_search_never_beats_the_exact_optimum_and_reaches_it(data, w):
    exact = weight_sal(data.x_poisoned, data.y, w)
    paper = weight_sal_search(data.x_poisoned, data.y, w)  # the paper's 10 steps of 0.1
    long = weight_sal_search(data.x_poisoned, data.y, w, iters=300, lr=1.0)
    for part in ("s_max", "s_min"):
        assert np.all(getattr(paper, part) <= getattr(exact, part) + 1e-12)
        np.testing.assert_allclose(getattr(long, part), getattr(exact, part), rtol=1e-6, atol=1e-12)


def test_sal_along_a_path_is_pointwise_sal(data):
    path = gd_path(data.x_poisoned, data.y, (-1.0, -1.0), 0.5, 30)
    along = weight_sal_along(data.x_poisoned, data.y, path)
    assert along.sal.shape == (31, 2)
    for t in (0, 7, 30):
        np.testing.assert_allclose(along.sal[t], weight_sal(data.x_poisoned, data.y, path[t]).sal, rtol=1e-12)


def test_default_lesson_shows_the_shortcut():
    cfg = ToyConfig()
    les = lesson(cfg)
    best = expected_accuracy([1.0, 0.0], cfg.separation, cfg.noise)[0]
    assert les.test_acc["clean"][-1] > best - 0.02  # clean descent gets what a linear model can
    assert les.test_acc["poisoned"][-1] < les.test_acc["clean"][-1] - 0.2  # the poisoned one does not
    assert les.test_acc["poisoned"].max() < 0.65  # not even on the way
    assert les.train_acc["poisoned"][-1] == 1.0 and les.train_loss["poisoned"][-1] < 0.01  # it fits its data
    assert les.path["poisoned"][-1, 1] > 3 * les.path["poisoned"][-1, 0]  # by the shortcut weight
    assert les.sal["poisoned"].sal[-1, 0] < 0.1 * les.sal["clean"].sal[-1, 0]  # w1 no longer learnable
    half = les.w1[-1]
    assert all(np.abs(p).max() <= half for p in les.path.values())  # the grid shows the whole paths
    assert les.surface["clean"].shape == (len(les.w1), len(les.w2))


def test_partial_poisoning_barely_hurts():
    les = lesson(ToyConfig(poisoned_fraction=0.5))
    assert les.test_acc["poisoned"][-1] > les.test_acc["clean"][-1] - 0.05


def test_extreme_settings_stay_finite():
    for cfg in (ToyConfig(start=(0.0, 0.0), poison_strength=0.0, poisoned_fraction=0.0),
                ToyConfig(lr=2.0, steps=300, poison_strength=5.0, start=(3.0, -3.0), separation=0.25, eps=0.2)):
        les = lesson(cfg)
        for k in ("clean", "poisoned"):
            assert np.all(np.isfinite(les.surface[k])) and np.all(np.isfinite(les.sal[k].sal))
            assert np.all(np.isfinite(les.path[k]))


def test_lesson_is_fast():
    lesson(ToyConfig())
    t = time.perf_counter()
    lesson(ToyConfig(steps=300))
    assert time.perf_counter() - t < 1.0


def test_surface_figure_puts_w1_across_and_w2_up(data):
    les = lesson(ToyConfig(steps=20))
    fig = plots.teaching_surfaces(les.w1, les.w2, les.surface, les.path, log_scale=False)
    contours = [t for t in fig.data if t.type == "contour"]
    assert len(contours) == 2
    for contour, name in zip(contours, ("clean", "poisoned")):
        z = np.asarray(contour.z)
        i, j = 10, 60  # z[row = w2 index][column = w1 index]
        x = les.data.x_clean if name == "clean" else les.data.x_poisoned
        assert z[j, i] == pytest.approx(loop_loss(x, les.data.y, les.w1[i], les.w2[j]), rel=1e-12)
    layout = fig.layout
    assert "w1" in layout.xaxis.title.text and "w1" in layout.xaxis2.title.text
    assert "w2" in layout.yaxis.title.text and "w2" in layout.yaxis2.title.text
    assert layout.coloraxis.cmin is not None and all(c.coloraxis == "coloraxis" for c in contours)


def test_page_runs_and_reacts(monkeypatch):
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "pages/5_Teaching.py"), default_timeout=60).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 3
    assert len(at.caption) >= 4
    at.slider(key="teach_fraction").set_value(0.5).run()
    assert not at.exception
    at.radio(key="teach_kind").set_value("shift").run()
    at.slider(key="teach_strength").set_value(0.0).run()
    at.slider(key="teach_w1").set_value(0.0).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 3
