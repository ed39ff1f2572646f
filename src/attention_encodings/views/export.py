"""Writing charts to files, and the JavaScript that renders them in a page, all offline through vl-convert."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import altair as alt
import vl_convert

from ..errors import InputError, OptionError
from ..names import FIGURE_FILE_TYPES as FILE_TYPES

PNG_SCALE = 2.0
"""PNGs are drawn at twice the chart's size, sharp on high-density screens and in print."""


def check_file_type(path: Path) -> str:
    """The extension of `path` if `save` can write it, else a one-line `OptionError`."""
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        named = f"a {suffix} file" if suffix else "a file without an extension"
        raise OptionError(f"cannot save a figure as {named} ({path}); use one of: {', '.join(FILE_TYPES)}")
    return suffix


def save(chart: alt.TopLevelMixin, path: Path) -> None:
    """Write `chart` to `path` as PNG, SVG, PDF or self-contained HTML, chosen by its extension."""
    suffix = check_file_type(path)
    options = {"inline": True} if suffix == ".html" else {"scale_factor": PNG_SCALE if suffix == ".png" else 1.0}
    try:
        chart.save(str(path), format=suffix[1:], **options)
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror or error}") from error


@lru_cache(maxsize=1)
def vega_javascript() -> str:
    """Vega, Vega-Lite and Vega-Embed in one script (globals `vega`, `vegaLite`, `vegaEmbed`), matching the
    Vega-Lite version Altair writes, so a page needs no CDN."""
    version = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return vl_convert.javascript_bundle(vl_version=version)
