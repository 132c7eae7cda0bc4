"""The perturbation measures against independent computations and constructed cases."""
import numpy as np
import pytest

from ulviz.core.errors import UlvizError
from ulviz.measure import perturbations as P


def _labels(n=300, classes=3, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


def test_norms_by_hand():
    d = np.zeros((2, 1, 2, 2), dtype=np.float32)
    d[0, 0, 0, 0], d[0, 0, 1, 1] = 0.03, -0.04
    n = P.norms(d)
    assert n["linf"][0] == pytest.approx(0.04) and n["l2"][0] == pytest.approx(0.05)  # 3-4-5
    assert n["l0"][0] == pytest.approx(0.5) and n["l0"][1] == 0 and n["linf"][1] == 0


def test_spectrum_is_the_mean_fft_amplitude_computed_by_loops():
    rng = np.random.default_rng(1)
    d = rng.normal(size=(3, 2, 4, 4))
    by_hand = np.zeros((4, 4))
    for img in d:
        for ch in img:  # the DFT written out: sum_x,y f(x, y) exp(-2 pi i (u x + v y) / 4)
            for u in range(4):
                for v in range(4):
                    s = sum(ch[x, y] * np.exp(-2j * np.pi * (u * x + v * y) / 4) for x in range(4) for y in range(4))
                    by_hand[u, v] += abs(s)
    by_hand /= 6
    np.testing.assert_allclose(P.amplitude_spectrum(d), np.fft.fftshift(by_hand), atol=1e-9)


def test_low_frequency_share_of_a_constant_and_of_a_checkerboard():
    constant = np.full((2, 1, 8, 8), 0.03)  # all energy at frequency 0
    checker = 0.03 * (-1.0) ** np.add.outer(np.arange(8), np.arange(8))[None, None]  # all at Nyquist
    assert P.low_frequency_share(constant) == pytest.approx(1.0)
    assert P.low_frequency_share(checker) == pytest.approx(0.0)
    assert np.isnan(P.low_frequency_share(np.zeros((1, 1, 4, 4))))


def test_classwise_share_of_a_classwise_pattern_and_of_noise():
    rng = np.random.default_rng(0)
    y = _labels()
    patterns = rng.uniform(-0.03, 0.03, (3, 1, 8, 8))
    classwise = patterns[y]
    noise = rng.uniform(-0.03, 0.03, (len(y), 1, 8, 8))
    assert P.classwise_share(classwise, y) == pytest.approx(1.0)
    assert P.classwise_share(noise, y) < 0.05  # class means of noise explain ~ (classes-1)/n of it
    assert P.classwise_share(classwise + 0.5 * noise, y) > P.CLASSWISE_AT


def test_separability_near_one_for_classwise_patterns_near_chance_for_noise():
    rng = np.random.default_rng(0)
    y = _labels(600)
    classwise = rng.uniform(-0.03, 0.03, (3, 1, 8, 8))[y] + rng.normal(0, 0.005, (600, 1, 8, 8))
    noise = rng.uniform(-0.03, 0.03, (600, 1, 8, 8))
    assert P.separability(classwise, y) > 0.97
    assert abs(P.separability(noise, y) - 1 / 3) < 0.12
    with pytest.raises(UlvizError, match="two classes"):
        P.separability(noise, np.zeros(600, dtype=int))


def test_report_gallery_and_amplification():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    clean = rng.uniform(0.2, 0.8, (60, 1, 8, 8)).astype(np.float32)
    delta = rng.uniform(-0.03, 0.03, (3, 1, 8, 8))[y].astype(np.float32)
    r = P.report(clean, clean + delta, y, per_class=2)
    assert list(r.gallery_labels) == [0, 0, 1, 1, 2, 2] and r.changed == 1.0
    row = P.summary_row(r)
    assert row["class-wise"] and row["separability"] > 0.95 and row["chance"] == pytest.approx(1 / 3)
    a = P.amplified(r.delta)
    assert a.min() >= 0 and a.max() <= 1 and np.isclose(min(1 - a.max(), a.min()), 0)  # the largest change hits 0 or 1
    with pytest.raises(UlvizError, match="no perturbation"):
        P.report(clean, clean, y)


def test_run_report_of_a_protected_run_matches_the_poison(tmp_path):
    from dataclasses import replace

    from conftest import tiny_config
    from ulviz import open_run, train

    cfg = tiny_config(epochs=1)
    cfg = replace(cfg, name="rand", poison=replace(cfg.poison, method="random", params={"mode": "class", "eps": 0.05}))
    train(cfg, tmp_path / "r.h5")
    r = P.run_report(open_run(tmp_path / "r.h5"))
    assert r.norms["linf"].max() <= 0.05 + 1e-6  # the budget asked for
    assert r.classwise > P.CLASSWISE_AT and r.separability > 0.9  # class-wise noise names the class
    clean_cfg = replace(cfg, name="c", poison=replace(cfg.poison, method="clean", params={}))
    train(clean_cfg, tmp_path / "c.h5")
    with pytest.raises(UlvizError, match="clean run"):
        P.run_report(open_run(tmp_path / "c.h5"))
