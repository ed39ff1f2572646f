"""The charts of a corpus summary, as Vega-Lite specs (Altair): each measure against the layer, the median as a
line and the interquartile range as a band, for the broad groups together and for each part of speech apart."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

from ..catalog import MEASURES, MeasureInfo
from .charts import FONT, LINE_SIZE, MUTED, measure_axis, symlog_top

BROAD = ("all", "function", "content", "special")
"""The groups drawn together in one chart per measure."""
BROAD_COLOURS = ("#212529", "#d9480f", "#1971c2", MUTED)
MIN_TOKENS = 30
"""A part of speech with fewer tokens than this is drawn faded and marked "few" in its panel's title: its median
and quartiles rest on too few tokens to compare with the others'."""
BASELINE = "anisotropy"
"""The summary rows drawn as the cosine chart's baseline (see `corpus.summary.ANISOTROPY`)."""


def _info(column: str) -> MeasureInfo:
    return next(info for info in MEASURES.values() if info.column == column)


def _axes(info: MeasureInfo, layers: list[int], settings: Any, largest: float) -> tuple[alt.X, alt.Scale, alt.Axis]:
    """The layer axis (a layer-pair measure's labelled `0→1`, as `plot` labels it, over the pairs it has), and the
    measure's scale and axis for values up to `largest` (symlog ticks at powers of ten, which cannot collide)."""
    if info.steps:
        layers = layers[:-1]
        axis = alt.Axis(values=layers, labelExpr="datum.value + '→' + (datum.value + 1)")
    else:
        axis = alt.Axis(values=layers, format="d")
    title = "layer l → l+1" if info.steps else "layer"
    x = alt.X("layer:Q", title=title, axis=axis, scale=alt.Scale(domain=[min(layers), max(layers)]))
    details: dict[str, Any] = {"type": "symlog", "domain": [0, symlog_top(largest)]} if info.scale == "symlog" else {"zero": False}
    bounds = info.bounds(settings)
    if bounds is not None:
        details["domain"] = bounds
    return x, alt.Scale(**details), measure_axis(info, largest)


def _tooltip(info: MeasureInfo) -> list[alt.Tooltip]:
    number = info.format if info.format != "d" else ".1f"
    return [
        alt.Tooltip("group:N"),
        alt.Tooltip("layer:Q"),
        alt.Tooltip("n:Q", format=","),
        alt.Tooltip("median:Q", format=number),
        alt.Tooltip("q25:Q", format=number),
        alt.Tooltip("q75:Q", format=number),
        alt.Tooltip("mean:Q", format=number),
    ]


def broad_chart(summary: pd.DataFrame, column: str, settings: Any) -> alt.LayerChart:
    """One measure against the layer for `all`, `function`, `content` and `special` together: median lines and
    interquartile bands; the cosine chart also draws the corpus anisotropy as a dashed baseline."""
    info = _info(column)
    groups = [g for g in BROAD if g in set(summary["group"])]
    data = summary[(summary["measure"] == column) & summary["group"].isin(groups)]
    x, scale, axis = _axes(info, sorted(summary["layer"].unique().tolist()), settings, _largest(data))
    legend = alt.Legend(symbolType="stroke", symbolOpacity=1, symbolStrokeWidth=2.5)  # the line's colour, not the band's
    colour = alt.Color(
        "group:N", sort=groups, scale=alt.Scale(domain=groups, range=list(BROAD_COLOURS[: len(groups)])), title=None,
        legend=legend,
    )
    base = alt.Chart(data).encode(x=x, color=colour)
    layers: list[alt.Chart] = [
        base.mark_area(opacity=0.14).encode(y=alt.Y("q25:Q", scale=scale, title=info.unit, axis=axis), y2="q75:Q"),
        base.mark_line(strokeWidth=2.5).encode(y=alt.Y("median:Q", scale=scale)),
        base.mark_point(filled=True, size=28).encode(y=alt.Y("median:Q", scale=scale), tooltip=_tooltip(info)),
    ]
    baseline = summary[summary["measure"] == BASELINE]
    if column == "cosine" and len(baseline):
        line = alt.Chart(baseline).encode(x=x, y=alt.Y("mean:Q", scale=scale))
        layers.append(
            line.mark_line(strokeDash=[5, 4], color="#495057", strokeWidth=1.5).encode(
                tooltip=[alt.Tooltip("layer:Q"), alt.Tooltip("mean:Q", title="anisotropy", format=".3f")]
            )
        )
        last = baseline[baseline["layer"] == baseline["layer"].max()]
        layers.append(
            alt.Chart(last)
            .mark_text(align="right", dy=-8, fontSize=11, color="#495057")
            .encode(x=x, y=alt.Y("mean:Q", scale=scale), text=alt.value("anisotropy"))
        )
    return alt.layer(*layers, title=alt.Title(info.titled(settings), anchor="start"), **LINE_SIZE)


def class_chart(summary: pd.DataFrame, column: str, settings: Any, classes: list[str]) -> alt.FacetChart:
    """One measure against the layer for each part of speech in `classes`, a small chart each: median line and
    interquartile band."""
    info = _info(column)
    data = summary[(summary["measure"] == column) & summary["group"].isin(classes)].copy()
    x, scale, axis = _axes(info, sorted(summary["layer"].unique().tolist()), settings, _largest(data))
    counts = data.groupby("group")["n"].max()
    panels = {g: f"{g} (n = {counts[g]:,}{', few' if counts[g] < MIN_TOKENS else ''})" for g in classes if g in counts}
    data["panel"] = data["group"].map(panels)
    data["few"] = data["group"].map(counts) < MIN_TOKENS
    faded = alt.condition("datum.few", alt.value(0.35), alt.value(1))
    base = alt.Chart().encode(x=x.title(None), opacity=faded)
    band = base.mark_area(color="#1971c2", fillOpacity=0.2).encode(y=alt.Y("q25:Q", scale=scale, title=None, axis=axis), y2="q75:Q")
    line = base.mark_line(color="#1971c2", strokeWidth=2).encode(y=alt.Y("median:Q", scale=scale), tooltip=_tooltip(info))
    return (
        alt.layer(band, line, data=data)
        .properties(width=150, height=95)
        .facet(
            facet=alt.Facet(
                "panel:N", sort=list(panels.values()), title=None, header=alt.Header(labelFontWeight="bold", labelFontSize=12)
            ),
            columns=6,
            title=alt.Title(f"{info.titled(settings)}, by part of speech", anchor="start"),
        )
        .resolve_axis(x="independent")  # each panel its own layer axis: no bare axis under an empty grid cell
    )


def _largest(data: pd.DataFrame) -> float:
    """The largest value a chart of `data` draws (its upper quartiles), where a symlog axis must reach."""
    return float(data["q75"].max()) if len(data) else 1.0


def corpus_charts(summary: pd.DataFrame, columns: list[str], settings: Any, classes: list[str]) -> dict[str, alt.TopLevelMixin]:
    """Every chart of a corpus report, by name: `broad_<column>` per measure, and `classes_<column>` per measure
    when there are parts of speech (`classes`, in summary order)."""
    charts: dict[str, alt.TopLevelMixin] = {f"broad_{c}": broad_chart(summary, c, settings) for c in columns}
    if classes:
        charts |= {f"classes_{c}": class_chart(summary, c, settings, classes) for c in columns}
    return {name: chart.configure(font=FONT).configure_view(stroke=None) for name, chart in charts.items()}
