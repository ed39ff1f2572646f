"""Every chart of an analysis, each defined once as a Vega-Lite spec (through Altair).

The same spec renders in the web page (vega-embed), in a notebook and, through vl-convert, to PNG, SVG,
PDF or a self-contained HTML file. Which token is selected and which one the pointer is over are Vega
parameters (`selected`, `hovered`: token indices, -1 for none), so a page changes them with
`view.signal(...)` and every chart follows without recomputing anything.

Which charts exist follows the measure catalog: each measure with a chart of its own (`MeasureInfo.charted`) gets
a line chart and a heatmap; a baseline (`MeasureInfo.baseline_of`) is drawn inside its measure's line chart for
the selected token: the vocabulary mean with its ±1 std band, and the text's anisotropy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from ..analysis import Analysis
from ..catalog import HEAD_MEASURES, MEASURES, MeasureInfo, baselines, charted
from ..display import shown
from ..errors import OptionError

SELECTED = "selected"
"""Vega parameter: the index of the selected token."""
HOVERED = "hovered"
"""Vega parameter: the index of the token under the pointer, -1 for none."""
LABELS = "token_labels"
"""Vega parameter: each token's label (`"2 flies"`), indexed by token index, for titles."""
FIGURES = (*charted(), "all")
"""What `figure()` draws: one measure's line chart, or every chart."""

ACCENT = "#d9480f"
"""The selected token's colour."""
HOVER = "#1971c2"
"""The hovered token's colour."""
MUTED = "#adb5bd"
BASELINE_COLOURS = ("#495057", "#2f9e44", "#7048e8")
"""The baselines drawn in a measure's chart, in catalog order (vocabulary mean, anisotropy)."""
FONT = "Inter, 'Segoe UI', Helvetica, Arial, sans-serif"
LINE_SIZE = {"width": 330, "height": 210}

MEASURES_DATA = "measures"
"""Named dataset: one row per (token, layer), see `measures_data`."""
NEIGHBOURS_DATA = "neighbours"
"""Named dataset: the neighbour table's cells, see `neighbour_data`."""
PREDICTIONS_DATA = "predictions"
"""Named dataset: the head's table's cells, see `prediction_data` (only where the model has an output head)."""
TABLES = (NEIGHBOURS_DATA, PREDICTIONS_DATA)
"""The tables of vocabulary items, each a chart and a dataset of that name: the neighbours, and the head's
predictions (only where the model has an output head)."""

TOKEN_KEY = "token_index"
"""The field that names a row's token for the `selected` and `hovered` parameters; a comparison's rows name run
A's token in `key` instead (see views/compare.py)."""


def is_token(param: str, key: str = TOKEN_KEY) -> str:
    """The Vega expression: this row's token is the one parameter `param` names."""
    return f"datum.{key} == {param}"


_IS_SELECTED = is_token(SELECTED)
_IS_HOVERED = is_token(HOVERED)


def check_figure(measure: str) -> str:
    """Return `measure` if `figure()` can draw it, else raise a one-line `OptionError`."""
    if measure not in FIGURES:
        raise OptionError(f"unknown measure {measure!r}; choose one of: {', '.join(FIGURES)}")
    return measure


def token_label(index: int, text: str) -> str:
    """How a token is named in charts: its index and its text as shown (`"2 ␣flies"`, see `display.shown`)."""
    return f"{index} {shown(text)}"


def default_token(result: Analysis) -> int:
    """The token selected when none is named: the first that is not special (`Time` in the seed)."""
    return next((t.index for t in result.tokens if not t.special), result.tokens[0].index)


def predicts_next(result: Analysis) -> bool:
    """Whether the output head's target at a token is the next token (a causal LM), not the token itself."""
    targets = result.head_targets
    return targets is not None and not np.array_equal(targets, [t.id for t in result.tokens])


def measures_data(result: Analysis) -> pd.DataFrame:
    """One row per (token, layer): every measure, the token's label, the name of the step to the next layer and,
    where the model has an output head, its `target` as shown (empty where there is none)."""
    frame = result.to_frame()
    frame["token"] = frame.token.map(shown)
    if result.head_targets is not None:
        texts = {t.id: t.shown for t in result.tokens}
        position = {t.index: column for column, t in enumerate(result.tokens)}
        targets = result.head_targets[frame.token_index.map(position).to_numpy()]
        frame["target"] = [texts.get(int(target), "") for target in targets]
    frame["label"] = frame.token_index.astype(str) + " " + frame.token
    frame["step"] = frame.layer.astype(str) + "→" + (frame.layer + 1).astype(str)
    return frame


def neighbour_data(result: Analysis) -> pd.DataFrame:
    """The neighbour table as rows: per (token, layer), the measures, the n nearest items and the token's
    own place, each with its row name, order, cell text, shade and whether it is the token itself."""
    near = result.neighbours_frame()
    items = near.rename(columns={"neighbour": "place", "neighbour_id": "id", "neighbour_text": "text", "cosine": "score"})
    ids = np.array([t.id for t in result.tokens])
    return _table_data(result, items, ids, "rank", "own")


def prediction_data(result: Analysis) -> pd.DataFrame:
    """The head's table as rows, like `neighbour_data`: per (token, layer), the measures, the head's n most
    probable items with their probabilities (its target outlined), and the target's place when it falls outside
    them (the target: the token itself for a masked LM, the next token for a causal one)."""
    near = result.predictions_frame()
    items = near.rename(
        columns={"prediction": "place", "prediction_id": "id", "prediction_text": "text", "probability": "score"}
    )
    return _table_data(result, items, np.asarray(result.head_targets), "head_rank", "target")


def _table_data(result: Analysis, items: pd.DataFrame, targets: np.ndarray, rank: str, own_row: str) -> pd.DataFrame:
    """Rows of a per-layer table of ranked vocabulary items (`items`: token_index, layer, place, id, text and a
    score in 0..1 that shades the cell): first every measure, then the items (the token's target, `targets` by
    column, outlined), then the row `own_row`: the target with its `rank` wherever it falls outside the items."""
    position = {t.index: column for column, t in enumerate(result.tokens)}
    columns = items.token_index.map(position).to_numpy()
    listed = pd.DataFrame(
        {
            "token_index": items.token_index,
            "layer": items.layer,
            "row": items.place.astype(str),
            "order": items.place + len(result.charted) - 1,
            "text": items.text.map(shown) + "  " + items.score.map("{:.2f}".format),
            "shade": items.score,
            "own": items.id.to_numpy() == targets[columns],
        }
    )
    frame = measures_data(result)
    n = result.neighbour_ids.shape[2]
    outside = frame[(frame[rank] >= n).fillna(False)]
    names = {t.id: shown(t.text) for t in result.tokens}
    target = pd.Series(targets[outside.token_index.map(position).to_numpy()], index=outside.index, dtype=object)
    own_text = target.map(names) + "  #" + outside[rank].map(str).astype(object)
    if rank == "rank":
        own_text = own_text + "  " + outside.cosine.map("{:.2f}".format).astype(object)
    summary = [
        (f"{m.name}→next" if m.info.steps else m.name, order, frame[m.info.column].map(partial(_printed, m.info.format)), frame)
        for order, m in enumerate(result.charted)
    ]
    summary.append((own_row, n + len(summary), own_text, outside))
    rows = [
        pd.DataFrame(
            {
                "token_index": part.token_index,
                "layer": part.layer,
                "row": name,
                "order": order,
                "text": text,
                "shade": np.nan,
                "own": name == own_row,
            }
        )
        for name, order, text, part in summary
    ]
    return pd.concat([*rows, listed], ignore_index=True)


def _printed(number_format: str, value: Any) -> str:
    """A value as its measure prints it in the table; a missing one (the last layer's step) as blank."""
    return "" if pd.isna(value) else format(value, number_format)


def token_params(result: Analysis, token: int | str | None = None) -> list[alt.Parameter]:
    """The parameters every chart reads: the selected token (default: `default_token`), the hovered one
    (none) and the token labels."""
    selected = default_token(result) if token is None else result.token_index(token)
    labels = [""] * (max(t.index for t in result.tokens) + 1)
    for t in result.tokens:
        labels[t.index] = token_label(t.index, t.text)
    return [
        alt.param(name=SELECTED, value=selected),
        alt.param(name=HOVERED, value=-1),
        alt.param(name=LABELS, value=labels),
    ]


def _title(text: str, note: str = "", lines: bool = False) -> alt.Title:
    """A chart title whose second line names the selected token, following the `selected` parameter; with
    `lines`, it says that token is the one in colour, which a static export needs (its grey lines have no
    tooltip)."""
    colour = " (in colour; other tokens grey)" if lines else ""
    return alt.Title(alt.expr(f"[{text!r}, 'token ' + {LABELS}[{SELECTED}] + {note!r} + {colour!r}]"), anchor="start")


def _tooltip(info: MeasureInfo, target: bool = False) -> list[alt.Tooltip]:
    """A chart's tooltip; with `target`, also what the head ranks (the next token, for a causal LM)."""
    named = [alt.Tooltip("target:N", title="target (next token)")] if target else []
    return [
        alt.Tooltip("label:N", title="token"),
        *named,
        alt.Tooltip("layer:O", title="layer"),
        alt.Tooltip(f"{info.column}:Q", title=info.name, format=info.format),
    ]


def _x(result: Analysis, info: MeasureInfo, cells: bool) -> alt.X:
    """The layer axis of a line chart or (`cells`) a heatmap: layers 0..N, or for a layer-pair measure the steps
    l→l+1, whose labels stand upright in a heatmap, where they are wider than a cell."""
    if info.steps:
        steps = thinned(result.layers[:-1], CELL_TICKS if cells else STEP_TICKS)
        axis = alt.Axis(labelAngle=-90 if cells else 0, values=[f"{layer}→{layer + 1}" for layer in steps])
        return alt.X("step:O", sort=alt.SortField("layer"), title="layer l → l+1", axis=axis)
    if cells:
        axis = alt.Axis(labelAngle=0, values=thinned(result.layers, CELL_TICKS))
        return alt.X("layer:O", sort=alt.SortField("layer"), title="layer", axis=axis)
    return alt.X("layer:Q", title="layer", axis=alt.Axis(values=thinned(result.layers, LAYER_TICKS), format="d"))


LAYER_TICKS = 16
"""At most this many labelled layers on a line chart's layer axis (SmolLM2 has 31 layers)."""
STEP_TICKS = 8
"""At most this many labelled steps (`0→1`, wider than a layer's number) on a line chart's axis."""
HEATMAP_WIDTH = 330
"""A heatmap is at most this wide (its cells narrow for models with many layers), so `--measure all` stays bounded."""
CELL_TICKS = 16
"""At most this many labelled layers (or steps) under a heatmap, whose cells narrow with many layers."""
TABLE_WIDTH = 2480
"""A table of vocabulary items is at most this wide: with many layers its columns narrow to fit (to a minimum)."""


def table_column(layers: int) -> int:
    """The width of a layer's column in a table of vocabulary items: 108 px, narrowed to keep the table within
    `TABLE_WIDTH`, to no less than 80 (room for a short item and its two-digit cosine: `␣strugg  0.71`)."""
    return max(80, min(108, TABLE_WIDTH // layers))


def thinned(layers: tuple[int, ...] | list[int], most: int) -> list[int]:
    """Every k-th of `layers` from the first, the smallest k that labels at most `most` of them."""
    return list(layers[:: max(1, -(-len(layers) // most))])


def _scale(result: Analysis, info: MeasureInfo, largest: float | None = None, **colour: Any) -> alt.Scale:
    """A measure's scale, from its definition: symlog or linear, and its fixed domain where it has one; a symlog
    axis for values up to `largest` runs to the power of ten above them, where its last tick is."""
    details: dict[str, Any] = dict(colour)
    if info.scale == "symlog":
        details |= {"type": "symlog"} if colour else {"type": "symlog", "nice": False}
        if largest is not None:
            details["domain"] = [0, symlog_top(largest)]
    elif not colour:
        details["zero"] = False
    bounds = info.bounds(result.settings)
    if bounds is not None:
        details["domain"] = bounds
    return alt.Scale(**details)


def tick_format(info: MeasureInfo) -> str:
    """How a measure's axis and legend label their ticks: counts as integers, other values with no trailing
    zeros (`0.2`, `1`, `20`), while tooltips and tables keep the measure's own format."""
    return "d" if info.integer else "~r"


def symlog_top(largest: float) -> int:
    """The power of ten at or above `largest` (at least 1): where a symlog axis ends, so its ticks cover the data."""
    return 10 ** len(str(max(int(np.ceil(largest)) - 1, 0))) if largest > 1 else 1


def _baseline_layers(result: Analysis, info: MeasureInfo, data: alt.NamedData) -> list[alt.Chart]:
    """The baselines of `info`'s measure that `result` has, for the selected token: each a dashed line, with its
    ±1 band where it has one, named in a legend below the chart."""
    present = {*result.measures, *result.text_measures}
    drawn = [b for b in baselines(info.name) if b.name in present]
    bands = {b.band for b in drawn if b.band in present}
    lines = [b for b in drawn if b.name not in bands]
    labels = [_baseline_label(b, b.band in present, b.name in result.measures) for b in lines]
    colour = alt.Color(
        "baseline:N",
        scale=alt.Scale(domain=labels, range=list(BASELINE_COLOURS[: len(labels)])),
        legend=alt.Legend(
            orient="bottom", title=None, direction="horizontal", symbolType="stroke", symbolOpacity=1, symbolStrokeWidth=2.5,
            labelLimit=320,
        ),
    )
    x = _x(result, info, cells=False)
    y_axis = {"title": info.unit, "scale": _scale(result, info), "axis": alt.Axis(format=tick_format(info))}
    layers = []
    for baseline, label, dash in zip(lines, labels, ([6, 3], [2, 2], [8, 2, 2, 2])):
        base = (
            alt.Chart(data)
            .transform_filter(f"{_IS_SELECTED} && isValid(datum.{baseline.column})")
            .transform_calculate(baseline=json.dumps(label))
            .encode(x=x, color=colour)
        )
        if baseline.band in present:
            spread = MEASURES[baseline.band].column
            band = base.transform_calculate(low=f"datum.{baseline.column} - datum.{spread}", high=f"datum.{baseline.column} + datum.{spread}")
            layers.append(band.mark_area(opacity=0.14).encode(y=alt.Y("low:Q", **y_axis), y2="high:Q"))
        tooltip = [alt.Tooltip("layer:O", title="layer"), alt.Tooltip(f"{baseline.column}:Q", title=baseline.name, format=baseline.format)]
        layers.append(
            base.mark_line(strokeWidth=1.6, strokeDash=dash).encode(y=alt.Y(f"{baseline.column}:Q", **y_axis), tooltip=tooltip)
        )
    return layers


def _baseline_label(baseline: MeasureInfo, band: bool, of_token: bool) -> str:
    """A baseline's legend entry, saying whose it is (the selected token's, or the text's) and its band."""
    label = f"{baseline.title} ± 1 std" if band else baseline.title
    return f"Selected token's {label[0].lower()}{label[1:]}" if of_token else label


def measure_axis(info: MeasureInfo, largest: float) -> alt.Axis:
    """A measure's value axis: its tick format and, on a symlog scale, ticks at 0, 1, 10, 100, … up to the power of
    ten at or above `largest` (Vega's own ticks on a symlog scale are evenly spaced, so a rank axis would show only
    0 and the tens of thousands)."""
    if info.scale != "symlog":
        return alt.Axis(format=tick_format(info))
    top = symlog_top(largest)
    return alt.Axis(format=tick_format(info), values=[0] + [10**power for power in range(len(str(top)))])


def trajectory_chart(result: Analysis, measure: str) -> alt.LayerChart:
    """One measure against layer, a line per token: the selected token drawn in colour and labelled,
    the hovered one in a second colour, the others muted; the measure's baselines for the selected token behind
    them (see `_baseline_layers`). Reads the `measures` dataset."""
    info = MEASURES[measure]
    field = info.column
    largest = np.max(result.measure(measure).values, initial=1)
    y = alt.Y(f"{field}:Q", title=info.unit, scale=_scale(result, info, largest), axis=measure_axis(info, largest))
    data = alt.NamedData(MEASURES_DATA)
    next_token = measure in HEAD_MEASURES and predicts_next(result)
    tooltip = _tooltip(info, target=next_token)
    base = alt.Chart(data).encode(x=_x(result, info, cells=False), y=y, detail="token_index:N", tooltip=tooltip)
    base = base.transform_filter(f"isValid(datum.{field})")
    muted = base.mark_line(color=MUTED, strokeWidth=1.2, opacity=0.55)
    hovered = base.mark_line(color=HOVER, strokeWidth=2.5).transform_filter(f"{_IS_HOVERED} && !({_IS_SELECTED})")
    selected = base.transform_filter(_IS_SELECTED)
    last = selected.transform_window(from_end="row_number()", sort=[alt.SortField("layer", order="descending")])
    last = last.transform_filter("datum.from_end == 1")
    if next_token:  # the line is the head's rank of the next token: `Fruit → ␣flies`
        last = last.transform_calculate(line_label="datum.token + ' → ' + datum.target")
    return alt.layer(
        *_baseline_layers(result, info, data),
        muted,
        hovered,
        selected.mark_line(color=ACCENT, strokeWidth=3),
        selected.mark_point(color=ACCENT, filled=True, size=36),
        last.mark_text(align="left", dx=7, color=ACCENT, fontWeight="bold", fontSize=12).encode(
            text="line_label:N" if next_token else "token:N"
        ),
        title=_title(info.titled(result.settings), ", ranking the next token" if next_token else "", lines=True),
        **LINE_SIZE,
    )


def heatmap(result: Analysis, measure: str, key: str = TOKEN_KEY) -> alt.LayerChart:
    """Every token × every layer for one measure, as an overview; the selected token's row (by `key`) is outlined.
    Reads the `measures` dataset."""
    info = MEASURES[measure]
    selected, hovered = is_token(SELECTED, key), is_token(HOVERED, key)
    field = info.column
    colours = _scale(result, info, scheme="magma" if info.lower_is_closer else "viridis", reverse=info.lower_is_closer)
    base = alt.Chart(alt.NamedData(MEASURES_DATA)).encode(
        x=_x(result, info, cells=True),
        y=alt.Y(
            "label:N",
            sort=alt.SortField("token_index"),
            title=None,
            axis=alt.Axis(labelFontWeight=alt.expr(f"datum.value == {LABELS}[{SELECTED}] ? 'bold' : 'normal'")),
        ),
    ).transform_filter(f"isValid(datum.{field})")
    cells = base.mark_rect().encode(
        color=alt.Color(f"{field}:Q", scale=colours, title=None, legend=alt.Legend(orient="right", format=tick_format(info))),
        tooltip=_tooltip(info, target=measure in HEAD_MEASURES and predicts_next(result)),
    )
    outline = base.mark_rect(fill=None, strokeWidth=2).encode(
        stroke=alt.condition(selected, alt.value(ACCENT), alt.value(HOVER)),
        opacity=alt.condition(f"{selected} || {hovered}", alt.value(1), alt.value(0)),
    )
    rows = len(result.tokens)
    return alt.layer(
        cells,
        outline,
        title=alt.Title(f"{info.named}: every token × layer", anchor="start"),
        width=min(22 * len(result.measures[measure].layers), HEATMAP_WIDTH),
        height=max(120, 15 * rows),
    )


def neighbour_table(result: Analysis, key: str = TOKEN_KEY) -> alt.LayerChart:
    """The selected token (by `key`), layer by layer: its charted measures, its n nearest vocabulary items with
    their cosines (its own entry outlined), and its own rank when it falls outside the n. Reads the `neighbours`
    dataset."""
    n = result.neighbour_ids.shape[2]
    title = f"Nearest {n} vocabulary items per layer"
    return _item_table(result, NEIGHBOURS_DATA, key, title, " (its own entry outlined)")


def prediction_table(result: Analysis, key: str = TOKEN_KEY) -> alt.LayerChart:
    """The selected token (by `key`), layer by layer: its measures, the output head's n most probable items with
    their probabilities (the target outlined), and the target's head rank when it falls outside the n. Reads the
    `predictions` dataset."""
    n = result.neighbour_ids.shape[2]
    title = f"The output head's {n} most probable items per layer"
    return _item_table(result, PREDICTIONS_DATA, key, title, " (the target outlined)")


def _item_table(result: Analysis, data: str, key: str, title: str, note: str) -> alt.LayerChart:
    """A table of ranked vocabulary items per layer for the selected token, from a dataset of `_table_data`."""
    base = (
        alt.Chart(alt.NamedData(data))
        .transform_filter(is_token(SELECTED, key))
        .encode(
            x=alt.X("layer:O", title="layer", axis=alt.Axis(orient="top", labelAngle=0, domain=False, ticks=False)),
            y=alt.Y("row:N", sort=alt.SortField("order"), title=None, axis=alt.Axis(domain=False, ticks=False)),
        )
    )
    cells = base.mark_rect(stroke="white", strokeWidth=1).encode(
        color=alt.Color("shade:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]), legend=None),
    )
    summary = base.transform_filter("!isValid(datum.shade)").mark_rect(color="#f1f3f5", stroke="white")
    own = base.transform_filter("datum.own").mark_rect(fill=None, stroke=ACCENT, strokeWidth=2.5)
    summaries = len(result.charted)
    strong = f"datum.own || datum.order < {summaries}"
    text = base.encode(
        text="text:N", color=alt.condition("datum.shade > 0.6", alt.value("white"), alt.value("#212529"))
    )
    column = table_column(len(result.layers))
    size = 11 if column >= 100 else 10
    plain = text.transform_filter(f"!({strong})").mark_text(fontSize=size, limit=column - 4)
    bold = text.transform_filter(strong).mark_text(fontSize=size, limit=column - 4, fontWeight="bold")
    n = result.neighbour_ids.shape[2]
    return alt.layer(
        cells,
        summary,
        own,
        plain,
        bold,
        title=_title(title, note),
        width=column * len(result.layers),
        height=18 * (n + summaries + 1),
    )


def _tables(result: Analysis) -> dict[str, tuple[Callable[[Analysis], pd.DataFrame], Callable[[Analysis], alt.LayerChart]]]:
    """The tables of vocabulary items this analysis has, each named as its chart and dataset, with the
    functions that make its rows and its chart: the neighbours, and the head's predictions where there is a head."""
    tables = {NEIGHBOURS_DATA: (neighbour_data, neighbour_table)}
    if result.has_head:
        tables[PREDICTIONS_DATA] = (prediction_data, prediction_table)
    return tables


def datasets(result: Analysis) -> dict[str, list[dict[str, Any]]]:
    """The named datasets every chart reads: `measures`, `neighbours` and (with a head) `predictions`, as
    JSON-ready rows."""
    frames = {MEASURES_DATA: measures_data(result)} | {name: rows(result) for name, (rows, _) in _tables(result).items()}
    return {name: json.loads(frame.to_json(orient="records")) for name, frame in frames.items()}


def _finish(chart: alt.TopLevelMixin, result: Analysis, token: int | str | None) -> alt.TopLevelMixin:
    """A chart with the token parameters and the shared look; its data is named, not attached yet."""
    return chart.add_params(*token_params(result, token)).configure(font=FONT).configure_view(stroke=None)


def _charts(result: Analysis, token: int | str | None) -> dict[str, alt.TopLevelMixin]:
    names = [m.name for m in result.charted]
    built = {measure: trajectory_chart(result, measure) for measure in names}
    built |= {f"{measure}_heatmap": heatmap(result, measure) for measure in names}
    built |= {name: table(result) for name, (_, table) in _tables(result).items()}
    return {name: _finish(chart, result, token) for name, chart in built.items()}


def _attach(chart: alt.TopLevelMixin, data: dict[str, list[dict[str, Any]]]) -> alt.TopLevelMixin:
    """`chart` carrying `data` (set directly: validating every row here would cost seconds on long texts;
    `to_dict()` still validates the whole spec)."""
    chart.datasets = data
    return chart


def charts(result: Analysis, token: int | str | None = None) -> dict[str, alt.TopLevelMixin]:
    """Every chart, each standalone: a line chart per charted measure (`cosine`, `rank`, `overlap`, `zscore`, …),
    a heatmap per charted measure (`cosine_heatmap`, …), `neighbours` (the table) and, with a head,
    `predictions`, with `token` selected."""
    data = datasets(result)
    built = _charts(result, token)
    for name, chart in built.items():
        key = name if name in data else MEASURES_DATA
        _attach(chart, {key: data[key]})
    return built


def chart_specs(result: Analysis, token: int | str | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every chart's Vega-Lite spec, naming its data, and the datasets once: what a page embeds (putting the
    datasets back into each spec) without sending the same rows once per chart."""
    return {name: chart.to_dict() for name, chart in _charts(result, token).items()}, datasets(result)


def figure(result: Analysis, measure: str = "all", token: int | str | None = None) -> alt.TopLevelMixin:
    """One figure: a measure's line chart, or (`"all"`) every charted measure's line chart, the heatmaps and the
    tables (neighbours; the head's predictions where there is a head), with `token` selected. A measure this
    analysis lacks (head_rank without a head) is a one-line `MeasureUnavailableError`."""
    if check_figure(measure) != "all":
        result.measure(measure)
    data = datasets(result)
    if measure != "all":
        return _attach(_finish(trajectory_chart(result, measure), result, token), {MEASURES_DATA: data[MEASURES_DATA]})
    names = [m.name for m in result.charted]
    lines = alt.hconcat(*(trajectory_chart(result, m) for m in names), spacing=30).resolve_scale(color="independent")
    maps = alt.hconcat(*(heatmap(result, m) for m in names), spacing=40).resolve_scale(color="independent")
    tables = [table(result) for _, table in _tables(result).values()]
    chart = alt.vconcat(lines, maps, *tables, spacing=36).resolve_scale(color="independent")
    return _attach(_finish(chart, result, token), data)
