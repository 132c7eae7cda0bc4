"""The figures: axis titles on every subplot, shared SAL colour ranges that are dark at 0, one colour
per run, and titles that say what a landscape is a slice of."""
import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import plotly.colors
import pytest

from ulviz.app import plots

# Streamlit's chart theme replaces these colours in a figure's JSON with its own palette
PLACEHOLDER = re.compile(r"#0000(0[1-9]|[1-3][0-9]|40)\b", re.IGNORECASE)


def _land(kind="plane", resolution=5, **settings):
    axis = np.linspace(-1, 1, resolution)
    shape = (resolution, resolution) if kind == "plane" else (resolution,)
    loss = np.random.default_rng(0).uniform(0.5, 2.0, shape)
    coords = [axis, axis] if kind == "plane" else [axis]
    return SimpleNamespace(coords=coords, loss=loss, acc=np.full(shape, 0.5), settings={"kind": kind, **settings})


def _metrics(n=4, scale=1.0):
    e = np.arange(n)
    return pd.DataFrame({"epoch": e, "train_acc": 0.1 + 0.2 * e / n, "test_acc": 0.1 + 0.1 * e / n,
                         "train_loss": scale * (2.3 - 0.3 * e), "test_loss": scale * (2.4 - 0.2 * e)})


def _axis_titles(fig, kind):
    layout = fig.to_dict()["layout"]
    return {k: v.get("title", {}).get("text") for k, v in layout.items() if re.fullmatch(kind + r"axis\d*", k)}


def test_every_subplot_keeps_its_axis_titles():
    fig = plots.landscape_contours({"clean": _land(), "em": _land(), "ops": _land()})
    for kind in ("x", "y"):
        titles = _axis_titles(fig, kind)
        assert len(titles) == 3 and all(titles.values()), titles  # the first panel's too
    m = plots.metrics_figure({"clean": _metrics()})
    assert _axis_titles(m, "y") == {"yaxis": plots.ACC_AXIS, "yaxis2": "loss (cross-entropy, nats)"}
    assert set(_axis_titles(m, "x").values()) == {"epoch"}


def test_ud_chart_puts_accuracy_in_its_own_panel_not_on_a_second_axis():
    table = pd.DataFrame({"run": ["clean", "em"], "UD": [1.0, 0.4], "final_test_acc": [0.9, 0.2]})
    fig = plots.ud_bars(table, colours={"clean": "#111111", "em": "#222222"})
    assert fig.layout.yaxis.title.text == "UD (clean run = 1)"
    lower = fig.layout.yaxis2
    assert "accuracy" in lower.title.text and tuple(lower.range) == (0, 1)  # a fraction, like every table
    assert lower.overlaying is None  # its own panel: no tick of it can line up with UD = 1
    assert fig.data[0].yaxis == "y" and fig.data[1].yaxis == "y2"
    np.testing.assert_allclose(fig.data[1].y, [0.9, 0.2])
    assert list(fig.data[0].marker.color) == ["#111111", "#222222"]  # each run's own colour


def test_sal_heatmaps_share_one_range_dark_at_zero():
    rng = np.random.default_rng(1)
    small = pd.DataFrame(rng.uniform(0, 0.014, (3, 4)), index=[1, 2, 3], columns=list("abcd"))
    big = pd.DataFrame(rng.uniform(0.2, 1.4, (3, 4)), index=[1, 2, 3], columns=list("abcd"))
    zrange = plots.sal_range([small, big])
    assert zrange == (0.0, float(max(small.to_numpy().max(), big.to_numpy().max())))
    figs = [plots.sal_heatmap(f, n, 0.1, zrange) for n, f in (("small", small), ("big", big))]
    assert {(f.data[0].zmin, f.data[0].zmax) for f in figs} == {zrange}
    scale = figs[0].data[0].colorscale
    assert scale[0][0] == 0 and scale[-1][0] == 1
    lo, hi = (plotly.colors.unlabel_rgb(scale[i][1]) for i in (0, -1))
    assert sum(lo) < 30 and sum(hi) > 600  # dark at zmin (SAL 0), bright at the top
    for fig in figs:  # nothing Streamlit's theme would swap for a light palette colour
        assert not PLACEHOLDER.search(fig.to_json())
    alone = plots.sal_heatmap(small, "small")  # without a shared range: its own, still from 0
    assert alone.data[0].zmin == 0 and alone.data[0].zmax == pytest.approx(small.to_numpy().max())


def test_sal_range_ignores_nan_and_keeps_negative_values():
    assert plots.sal_range([np.array([[np.nan, 0.5], [0.2, np.inf]])]) == (0.0, 0.5)
    assert plots.sal_range([np.array([-0.1, 0.3])]) == (-0.1, 0.3)
    assert plots.sal_range([np.array([np.nan])]) == (0.0, 1.0)


def test_no_figure_carries_a_theme_placeholder_colour():
    lands = {"clean": _land(), "em": _land()}
    figs = [plots.landscape_contours(lands), plots.landscape_surface(lands["clean"], "clean"),
            plots.metrics_figure({"clean": _metrics()}),
            plots.divergence_heatmap(pd.DataFrame({"layer": ["a", "a"], "epoch": [1, 2],
                                                   "rel_distance": [0.1, 0.2]}), "em")]
    for fig in figs:
        assert not PLACEHOLDER.search(fig.to_json())


def test_run_colours_are_stable_whichever_runs_a_figure_shows():
    colours = plots.run_colours(["clean", "em", "ops"])
    assert len(set(colours.values())) == 3
    # a figure of only "ops" draws it in its colour, not in the first palette colour
    fig = plots.metrics_figure({"ops": _metrics()}, colours)
    assert {t.line.color for t in fig.data} == {colours["ops"]}
    hist = plots.sal_histogram({"em": np.array([0.1, 0.2])}, None, colours=colours)
    assert hist.data[0].line.color == colours["em"]
    lines = plots.landscape_lines({"ops": _land("line")}, colours=colours)
    assert lines.data[0].line.color == colours["ops"]
    plane = SimpleNamespace(coords=[np.zeros((3, 2))], explained=np.array([0.6, 0.3]))
    path = plots.path_figure(plane, ["em"], colours=colours)
    assert path.data[0].line.color == colours["em"]
    counts = plots.counts_per_epoch({"ops": np.array([1, 2])}, {"ops": np.array([1, 2])}, colours)
    assert counts.data[0].line.color == colours["ops"]


def test_metrics_figure_shows_accuracy_and_loss():
    m = _metrics(scale=2.0)
    fig = plots.metrics_figure({"clean": m})
    by_axis = {(t.name, t.yaxis): np.asarray(t.y) for t in fig.data}
    np.testing.assert_allclose(by_axis[("clean train", "y")], m["train_acc"])  # a fraction, as in the tables
    np.testing.assert_allclose(by_axis[("clean clean test", "y2")], m["test_loss"])
    np.testing.assert_allclose(by_axis[("clean train", "y2")], m["train_loss"])
    assert sum(t.showlegend is not False for t in fig.data) == 2  # one legend entry per run and split


def test_landscape_titles_say_what_the_slice_is():
    restricted = {"clean": _land("line", layer="conv2.weight"), "em": _land("line", layer="conv2.weight")}
    assert "conv2.weight" in plots.landscape_lines(restricted).layout.title.text
    assert "conv2.weight" in plots.landscape_contours({"clean": _land(layer="conv2.weight")}).layout.title.text
    assert "conv2.weight" not in plots.landscape_lines(restricted, subtitle="").layout.title.text
    assert "only fc" in plots.landscape_lines(restricted, subtitle="only fc").layout.title.text
    whole = plots.landscape_lines({"clean": _land("line", layer=None)}).layout.title.text
    assert "layer" not in whole and "<br>" not in whole
    own = plots.landscape_lines({"clean": _land("interp")}).layout.title.text
    assert "initial weights to its final weights" in own
    mixed = plots.landscape_lines({"clean": _land("interp"), "em": _land("interp", other="em.h5")})
    assert "clean run's final" in mixed.layout.title.text and "initial" in mixed.layout.title.text
    assert plots.CAPTIONS["interp"] != plots.CAPTIONS["line"]


def test_sal_histogram_title_names_its_epochs():
    fig = plots.sal_histogram({"clean": np.array([[0.1, 0.2]])}, 0.15, epochs="epochs 3–5")
    assert fig.layout.title.text.endswith("epochs 3–5")
    assert "all epochs" in plots.sal_histogram({"clean": np.array([[0.1]])}, None).layout.title.text
    assert json.loads(fig.to_json())  # serializable as Streamlit sends it


def test_a_run_keeps_its_colour_when_runs_are_added_and_colours_stay_distinct():
    """The issue's case: em-class went orange -> purple -> brown as runs were added, and with 12
    runs clean and random were both blue. Runs are (label, identity, is_clean), oldest first."""
    runs = [("clean", "t0|clean.h5", True)] + [(f"m{i}", f"t{i}|m{i}.h5", False) for i in range(1, 30)]
    first = plots.run_colours(runs[:3])
    for n in range(3, len(runs) + 1):
        now = plots.run_colours(runs[:n])
        assert all(now[k] == v for k, v in first.items())  # nobody older changes colour
        assert len(set(now.values())) == n  # all distinct, also past the palette
        first = now
    assert first["clean"] == plots.RUN_PALETTE[0]
    # the first nine runs wear the nine distinct base colours, the extras come only after them
    assert {first[k] for k, _, _ in runs[:len(plots.PALETTE)]} == set(plots.PALETTE)
    assert {first[k] for k, _, _ in runs[len(plots.PALETTE):20]} == set(plots.RUN_PALETTE[len(plots.PALETTE):])
    # a renamed run (the name changes, the file and its creation stamp do not) keeps its colour
    renamed = plots.run_colours([(("em-renamed" if k == "m4" else k), i, c) for k, i, c in runs])
    assert renamed["em-renamed"] == first["m4"]


def test_sal_histogram_outlines_count_every_value_once():
    v = {"a": np.array([0.0, 0.1, 0.1, 0.9, np.nan]), "b": np.array([0.5, 1.0])}
    fig = plots.sal_histogram(v, 0.3, bins=10)
    for trace, values in zip(fig.data, v.values()):
        counts = np.asarray(trace.y)[::2]  # each bin is drawn as a flat step of two points
        assert counts.sum() == np.isfinite(values).sum() and trace.mode == "lines"
    assert fig.layout.xaxis.exponentformat == "e"
