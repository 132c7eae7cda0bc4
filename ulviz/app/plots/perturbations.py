"""What a protection looks like: galleries of protected images and amplified perturbations, their
amplitude spectra and radial profiles.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import _colour, _layout, _scale


# -- what a protection looks like ---------------------------------------------------------------

def _rgb(images: np.ndarray) -> np.ndarray:
    """N x C x H x W in [0, 1] -> N x H x W x 3 uint8 (one channel repeated)."""
    x = np.clip(np.asarray(images, dtype=np.float64), 0, 1)
    x = np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x[:, :3]
    return (x.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


def perturbation_gallery(rows: dict[str, np.ndarray], labels: list[str], title: str) -> go.Figure:
    """A grid of images: one row per entry of `rows` (name -> N x C x H x W in [0, 1]), one
    column per image, columns titled by `labels`."""
    names = list(rows)
    n = len(labels)
    fig = make_subplots(rows=len(names), cols=n, column_titles=labels, row_titles=names,
                        horizontal_spacing=0.01, vertical_spacing=0.03)
    for r, name in enumerate(names):
        for c, img in enumerate(_rgb(rows[name])):
            fig.add_trace(go.Image(z=img, hoverinfo="skip"), row=r + 1, col=c + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=11)
    fig = _layout(fig, title, "", "", height=75 * len(names) + 110)
    return fig.update_layout(margin=dict(l=20, r=110, t=90, b=10))


def spectrum_heatmaps(spectra: dict[str, np.ndarray]) -> go.Figure:
    """The mean amplitude spectrum of each run's perturbation (log10, centred: low frequencies in
    the middle), side by side, each on its own colour range (the shape is what compares)."""
    names = list(spectra)
    fig = make_subplots(rows=1, cols=max(len(names), 1), subplot_titles=names, horizontal_spacing=0.04)
    for i, name in enumerate(names):
        s = np.asarray(spectra[name], dtype=float)
        h, w = s.shape
        fy, fx = np.fft.fftshift(np.fft.fftfreq(h)), np.fft.fftshift(np.fft.fftfreq(w))
        fig.add_trace(go.Heatmap(z=np.log10(np.clip(s, 1e-12, None)), x=fx, y=fy, colorscale=_scale("Viridis"),
                                 showscale=False, name=name,
                                 hovertemplate="fx %{x:.2f}<br>fy %{y:.2f}<br>log10 amplitude %{z:.2f}<extra>"
                                               + name + "</extra>"), row=1, col=i + 1)
        fig.update_xaxes(title_text="fx (cycles/px)", row=1, col=i + 1)
        fig.update_yaxes(scaleanchor="x" if i == 0 else f"x{i + 1}", row=1, col=i + 1)
    fig.update_yaxes(title_text="fy (cycles/px)", row=1, col=1)
    return _layout(fig, "Amplitude spectrum of the perturbation (log10, centre = low frequencies)", "", "",
                   height=360)


def radial_spectrum(profiles: dict[str, tuple[np.ndarray, np.ndarray]], colours: dict[str, str] | None = None,
                    cutoff: float | None = None) -> go.Figure:
    """Mean amplitude in rings of frequency (name -> (radius as a fraction of Nyquist, amplitude)),
    one line per run, log y; the low/high split drawn at `cutoff`."""
    fig = go.Figure()
    for i, (name, (r, a)) in enumerate(profiles.items()):
        fig.add_trace(go.Scatter(x=r, y=a, mode="lines+markers", name=name,
                                 line=dict(color=_colour(colours, name, i), width=2)))
    if cutoff is not None:
        fig.add_vline(x=cutoff, line_dash="dash", line_color="grey", annotation_text="low | high")
    fig.update_yaxes(type="log", tickformat=".0e")
    return _layout(fig, "Perturbation amplitude by frequency", "frequency (fraction of Nyquist)",
                   "mean amplitude (log scale)")
