"""Views: the charts of an analysis as Vega-Lite specs, and their export to PNG, SVG, PDF and HTML."""

from .charts import FIGURES, HOVERED, SELECTED, chart_specs, charts, check_figure, datasets, default_token, figure
from .export import FILE_TYPES, check_file_type, save, vega_javascript

__all__ = [
    "FIGURES",
    "FILE_TYPES",
    "HOVERED",
    "SELECTED",
    "chart_specs",
    "charts",
    "check_figure",
    "check_file_type",
    "datasets",
    "default_token",
    "figure",
    "save",
    "vega_javascript",
]
