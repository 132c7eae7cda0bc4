"""Figures leave the dashboard as PNG, SVG and PDF (rendered by plotly.js through kaleido) and as the
CSV of the data they draw."""
import io

import numpy as np
import pandas as pd
import pytest

from ulviz.app import plots

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-"}


def _figure():
    metrics = pd.DataFrame({"epoch": [0, 1, 2], "train_acc": [0.1, 0.5, 0.8], "test_acc": [0.1, 0.4, 0.7],
                            "train_loss": [2.3, 1.2, 0.6], "test_loss": [2.3, 1.4, 0.9]})
    return plots.metrics_figure({"clean": metrics}), metrics


needs_export = pytest.mark.skipif(plots.export_problem() is not None, reason=str(plots.export_problem()))


@needs_export
@pytest.mark.parametrize("fmt", plots.EXPORT_FORMATS)
def test_static_export_gives_the_format_asked(fmt):
    fig, _ = _figure()
    data = plots.figure_image(fig, fmt)
    if fmt == "svg":
        text = data.decode("utf-8")
        assert text.lstrip().startswith("<svg") and "</svg>" in text
        assert "Accuracy and loss per epoch" in text  # vector text, not a picture of it
    else:
        assert data.startswith(MAGIC[fmt])


def test_unknown_format_is_refused():
    fig, _ = _figure()
    with pytest.raises(ValueError, match="format"):
        plots.figure_image(fig, "eps")


def test_figure_data_holds_every_point_drawn():
    fig, metrics = _figure()
    table = plots.figure_data(fig)
    assert len(table) == sum(len(t.x) for t in fig.data) == 4 * len(metrics)
    train = table[(table["name"] == "clean train")]
    # the legend-sharing traces: accuracy panel first, then loss
    np.testing.assert_allclose(train["y"].to_numpy()[:3], metrics["train_acc"])
    np.testing.assert_allclose(train["y"].to_numpy()[3:], metrics["train_loss"])
    np.testing.assert_array_equal(train["x"].to_numpy()[:3], metrics["epoch"])


def test_figure_data_of_a_heatmap_has_one_row_per_cell():
    frame = pd.DataFrame([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], index=[1, 2], columns=["a", "b", "c"])
    table = plots.figure_data(plots.sal_heatmap(frame, "run"))
    assert len(table) == 6
    # heatmap z is layers x epochs: the cell (epoch 2, layer "b") holds frame.loc[2, "b"]
    cell = table[(table["x"] == 2) & (table["y"] == "b")]
    assert cell["z"].item() == pytest.approx(0.5)


def test_export_files_csv_is_the_data_given_or_the_figure_data():
    from ulviz.app import ui

    fig, metrics = _figure()
    files = ui.export_files(fig, metrics)
    back = pd.read_csv(io.StringIO(files["csv"]()))
    pd.testing.assert_frame_equal(back, metrics)
    own = pd.read_csv(io.StringIO(ui.export_files(fig)["csv"]()))
    np.testing.assert_allclose(own["y"], plots.figure_data(fig)["y"].astype(float))
    if plots.export_problem() is None:
        assert set(files) == {"png", "svg", "pdf", "csv"}
        assert files["pdf"]().startswith(MAGIC["pdf"])
