"""Views: the charts of an analysis as Vega-Lite specs, and their export to PNG, SVG, PDF and HTML."""

from .attribution import attribution_charts, attribution_figure, check_head
from .charts import (
    FIGURES,
    HOVERED,
    SELECTED,
    TABLES,
    chart_specs,
    charts,
    check_figure,
    datasets,
    default_token,
    figure,
)
from .compare import (
    PAIRED,
    comparison_charts,
    comparison_datasets,
    overlay_figure,
    page_specs,
    pair_charts,
    pair_figure,
    similarity_rows,
)
from .export import FILE_TYPES, check_file_type, save, vega_javascript

__all__ = [
    "FIGURES",
    "FILE_TYPES",
    "HOVERED",
    "PAIRED",
    "SELECTED",
    "TABLES",
    "attribution_charts",
    "attribution_figure",
    "chart_specs",
    "charts",
    "check_figure",
    "check_file_type",
    "check_head",
    "comparison_charts",
    "comparison_datasets",
    "datasets",
    "default_token",
    "figure",
    "overlay_figure",
    "page_specs",
    "pair_charts",
    "pair_figure",
    "save",
    "similarity_rows",
    "vega_javascript",
]
