"""Every figure of the dashboard: arrays in, plotly figures out. The only package importing plotly.

Each function returns a figure with a title and labelled axes; the pages add a one-line caption
saying how to read it (see :data:`CAPTIONS`). One module per family of figures: style (palettes,
colour scales, captions, the common layout), landscapes (and optimization paths), learnability
(SAL, UD, training curves), studies (cross-task, probe, defenses, grouped comparisons), teaching,
atlas (sharpness atlas, layer surgery), perturbations, and export (images, and the data behind a
figure). This ``__init__`` gathers their names into the one namespace the pages use:
``plots.sal_heatmap(...)``.
"""
from .atlas import ATLAS_SCALE, shared_range, measure_heatmap, correlation_bars, surgery_bars, surgery_layers
from .export import EXPORT_FORMATS, export_problem, figure_image, figure_data
from .landscapes import (landscape_detail, landscape_lines, landscape_contours, landscape_surface, path_figure,
                         divergence_heatmap)
from .learnability import sal_histogram, sal_heatmap, ud_bars, ud_seed_bars, counts_per_epoch, metrics_figure
from .perturbations import perturbation_gallery, spectrum_heatmaps, radial_spectrum
from .studies import (CROSSTASK_SCALE, crosstask_heatmap, probe_bars, defense_heatmap, defense_layers, group_bars,
                      group_bands, parallel_coordinates)
from .style import PALETTE, ACC_AXIS, SAL_SCALE, RUN_PALETTE, run_colours, sal_range, CAPTIONS
from .teaching import teaching_data, teaching_surfaces, teaching_accuracy, teaching_sal

__all__ = ["PALETTE", "ACC_AXIS", "SAL_SCALE", "RUN_PALETTE", "run_colours", "sal_range", "CAPTIONS",
           "landscape_detail", "landscape_lines", "landscape_contours", "landscape_surface",
           "path_figure", "divergence_heatmap", "sal_histogram", "sal_heatmap", "ud_bars", "ud_seed_bars",
           "counts_per_epoch", "metrics_figure", "CROSSTASK_SCALE", "crosstask_heatmap", "probe_bars",
           "defense_heatmap", "defense_layers", "group_bars", "group_bands", "parallel_coordinates",
           "teaching_data", "teaching_surfaces", "teaching_accuracy", "teaching_sal", "ATLAS_SCALE",
           "shared_range", "measure_heatmap", "correlation_bars", "surgery_bars", "surgery_layers",
           "EXPORT_FORMATS", "export_problem", "figure_image", "figure_data", "perturbation_gallery",
           "spectrum_heatmaps", "radial_spectrum"]
