"""Charts that compare: runs overlaid (a line per run, heatmaps and neighbour tables side by side), and a pair of
tokens (their similarity against the layer, and every token × token at one layer, chosen with a slider).

They read the named datasets the charts of one analysis read, with each row's run (`run`, `run_label`) and the
index of run A's matching token (`key`), so the `selected` parameter (a token of run A) picks the matching token
in every run. A pair is `selected` and `paired`; the similarity heatmap's layer is the `similarity_layer`
parameter, bound to a slider, so moving it never asks a server for anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from ..analysis import Analysis, token_index
from ..catalog import ANISOTROPY, HEAD_MEASURES, MEASURES, SIMILARITY
from ..comparison import Comparison
from ..errors import InputError
from .charts import (
    ACCENT,
    BASELINE_COLOURS,
    HOVER,
    LABELS,
    LINE_SIZE,
    MEASURES_DATA,
    NEIGHBOURS_DATA,
    PREDICTIONS_DATA,
    SELECTED,
    _attach,
    _finish,
    _scale,
    _title,
    _tooltip,
    _x,
    chart_specs,
    check_figure,
    heatmap,
    is_token,
    measure_axis,
    measures_data,
    neighbour_data,
    neighbour_table,
    predicts_next,
    prediction_data,
    prediction_table,
    token_label,
)

PAIRED = "paired"
"""Vega parameter: the index (in run A) of the token paired with the selected one, -1 for none."""
LAYER = "similarity_layer"
"""Vega parameter: the layer the similarity heatmap shows, bound to a slider."""
SIMILARITY_DATA = "similarity"
"""Named dataset: one row per (run, layer, token), its cosines to every token of its text in `values`."""
ANISOTROPY_DASH = (2, 2)
"""The pair chart's baseline, the text's anisotropy, is dotted (as inside the cosine chart)."""
KEY = "key"
"""The field holding run A's index of a compared row's token (-1: no match)."""
RUN_KEYS = "run_keys"
"""Vega parameter: per run, for each of its tokens, run A's matching token (-1: none), indexed [run][token]."""
RUN_LABELS = "run_token_labels"
"""Vega parameter: per run, each token's label (`"2 flies"`), indexed [run][token]."""
RESIZE = alt.AutoSizeParams(type="pad", resize=True)
"""A pair chart starts empty until a pair is chosen, so its layout must follow its data."""
RUN_COLOURS = (ACCENT, HOVER, "#2b8a3e", "#862e9c")
RUN_DASHES = ([1, 0], [6, 3], [2, 2], [8, 3, 2, 3])
"""One colour and one dash per run, so runs stay apart in print too."""
SIMILARITY_DECIMALS = 4
"""The similarity dataset's precision: what a chart can show, at a fraction of the JSON."""


def _rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))


def _runs_frame(comparison: Comparison, build: Callable[[Analysis], pd.DataFrame]) -> pd.DataFrame:
    """`build(run)` for every run, one after another, with each row's run, its label and run A's token (`key`)."""
    frames = []
    for number, (run, label, keys) in enumerate(zip(comparison.runs, comparison.labels, comparison.keys)):
        frame = build(run)
        frames.append(frame.assign(run=number, run_label=label, key=keys[frame.token_index.to_numpy()]))
    return pd.concat(frames, ignore_index=True)


def similarity_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """The `similarity` dataset: per run, layer and token, its cosines to every token of its text (charts
    flatten the `values` of the rows they show: a layer's T rows, or a token's N+1), and the text's anisotropy
    at that layer (the baseline of the pair chart)."""
    rows = []
    for number, (run, label) in enumerate(zip(comparison.runs, comparison.labels)):
        if run.similarity is None:
            raise InputError(f"run {number + 1} ({label}) has no token-to-token similarity; analyse with similarity=True")
        values = np.round(run.similarity.values.astype(np.float64), SIMILARITY_DECIMALS).tolist()
        anisotropy = [None if np.isnan(v) else round(float(v), SIMILARITY_DECIMALS) for v in run.text_measures["anisotropy"]]
        rows += [
            {
                "run": number,
                "run_label": label,
                "layer": layer,
                "token_index": token.index,
                "values": values[layer][row],
                "anisotropy": anisotropy[layer],
            }
            for layer in run.layers
            for row, token in enumerate(run.similarity.rows)
        ]
    return rows


def _heads(comparison: Comparison) -> bool:
    """Whether every run's model has an output head, so the runs' predictions can stand side by side."""
    return all(run.has_head for run in comparison.runs)


def comparison_datasets(comparison: Comparison) -> dict[str, list[dict[str, Any]]]:
    """The `measures` and `neighbours` (and, where every run has a head, `predictions`) datasets of every run, one
    after another, with `run`, `run_label`, `key`."""
    data = {
        MEASURES_DATA: _rows(_runs_frame(comparison, measures_data)),
        NEIGHBOURS_DATA: _rows(_runs_frame(comparison, neighbour_data)),
    }
    if _heads(comparison):
        data[PREDICTIONS_DATA] = _rows(_runs_frame(comparison, prediction_data))
    return data


def _run_scale(comparison: Comparison, channel: str) -> alt.Scale:
    count = len(comparison.runs)
    return alt.Scale(domain=list(comparison.labels), range=list(RUN_COLOURS if channel == "color" else RUN_DASHES)[:count])


def _run_encoding(comparison: Comparison) -> dict[str, Any]:
    """A colour and a dash per run, one legend that names what differs; one run needs neither."""
    if len(comparison.runs) == 1:
        return {}
    legend = alt.Legend(title=comparison.differs, orient="bottom", labelLimit=320, symbolType="stroke", symbolStrokeWidth=2.5)
    return {
        "color": alt.Color("run_label:N", scale=_run_scale(comparison, "color"), legend=legend),
        "strokeDash": alt.StrokeDash("run_label:N", scale=_run_scale(comparison, "strokeDash"), legend=legend),
    }


def _longest(comparison: Comparison) -> Analysis:
    return max(comparison.runs, key=lambda run: len(run.layers))


def overlay_chart(comparison: Comparison, measure: str) -> alt.LayerChart:
    """One measure against layer for the selected token, a line per run (matched by text). Reads `measures`. Where
    every run is a causal LM, the head's rank is of the next token, and the title and tooltip say so."""
    info = MEASURES[measure]
    next_token = measure in HEAD_MEASURES and all(predicts_next(run) for run in comparison.runs)
    field = info.column
    widest = max(comparison.runs, key=lambda run: (info.bounds(run.settings) or [0, 0])[1])
    largest = max(np.max(run.measure(measure).values, initial=1) for run in comparison.runs)
    y = alt.Y(f"{field}:Q", title=info.unit, scale=_scale(widest, info, largest), axis=measure_axis(info, largest))
    base = (
        alt.Chart(alt.NamedData(MEASURES_DATA))
        .transform_filter(f"isValid(datum.{field}) && {is_token(SELECTED, KEY)}")
        .encode(
            x=_x(_longest(comparison), info, cells=False),
            y=y,
            detail="run:N",
            tooltip=[alt.Tooltip("run_label:N", title=comparison.differs), *_tooltip(info, target=next_token)],
            **_run_encoding(comparison),
        )
    )
    return alt.layer(
        base.mark_line(strokeWidth=2.5),
        base.mark_point(filled=True, size=30).encode(strokeDash=alt.value([1, 0])),
        title=_title(info.titled(comparison.runs[0].settings), ", ranking the next token" if next_token else ""),
        **LINE_SIZE,
    )


def _side_by_side(comparison: Comparison, draw: Callable[[Analysis], alt.LayerChart], title: str) -> alt.HConcatChart:
    """One chart per run, each showing only its run's rows, titled with its label."""
    charts = [
        draw(run).transform_filter(f"datum.run == {number}").properties(title=alt.Title(f"{label}: {title}", anchor="start"))
        for number, (run, label) in enumerate(zip(comparison.runs, comparison.labels))
    ]
    return alt.hconcat(*charts, spacing=40)


def _measures(comparison: Comparison) -> list[str]:
    """The charted measures every run has, in run A's order (baselines stay in each run's own charts)."""
    return [m.name for m in comparison.runs[0].charted if all(m.name in run.measures for run in comparison.runs)]


def comparison_charts(comparison: Comparison) -> dict[str, alt.TopLevelMixin]:
    """The page's charts for runs side by side, under the names of one analysis's: a line chart per measure with
    a line per run, a heatmap per measure with the runs side by side, and the runs' neighbour tables (and their
    head's predictions, where every run has a head)."""
    built: dict[str, alt.TopLevelMixin] = {measure: overlay_chart(comparison, measure) for measure in _measures(comparison)}
    for measure in _measures(comparison):
        maps = _side_by_side(comparison, partial(heatmap, measure=measure, key=KEY), f"{MEASURES[measure].named}, every token × layer")
        built[f"{measure}_heatmap"] = maps.resolve_scale(color="shared")
    built["neighbours"] = _side_by_side(comparison, partial(neighbour_table, key=KEY), "nearest vocabulary items")
    if _heads(comparison):
        built["predictions"] = _side_by_side(comparison, partial(prediction_table, key=KEY), "the output head's predictions")
    return built


def overlay_figure(comparison: Comparison, measure: str = "all", token: int | str | None = None) -> alt.TopLevelMixin:
    """The runs of `comparison` in one figure: a measure's overlaid line chart, or (`"all"`) every measure's,
    the heatmaps side by side and the neighbour tables (and head predictions) side by side; `token` (of run A)
    selected."""
    built = comparison_charts(comparison)
    if check_figure(measure) != "all":
        for run in comparison.runs:  # a measure some run lacks (head_rank without a head) says why, in one line
            run.measure(measure)
        chart = built[measure]
    else:
        measures = _measures(comparison)
        lines = alt.hconcat(*(built[m] for m in measures), spacing=30).resolve_scale(color="shared", strokeDash="shared")
        tables = [built[name] for name in ("neighbours", "predictions") if name in built]
        chart = alt.vconcat(lines, *(built[f"{m}_heatmap"] for m in measures), *tables, spacing=36)
        chart = chart.resolve_scale(color="independent", strokeDash="independent")
    return _attach(_finish(chart, comparison.runs[0], token), comparison_datasets(comparison))


def _flattened(chart: alt.Chart) -> alt.Chart:
    """Similarity rows spread into one row per other token: `similarity` and `other` (its index)."""
    chart = chart.transform_calculate(other="sequence(length(datum.values))")
    return chart.transform_flatten(["values", "other"], as_=["similarity", "other"])


def pair_chart(comparison: Comparison) -> alt.LayerChart:
    """The similarity of the selected and the paired token against the layer, a line per run, over its baseline:
    the text's anisotropy (dotted), what two of its tokens share on average. Reads `similarity`."""
    base = alt.Chart(alt.NamedData(SIMILARITY_DATA)).transform_filter(f"{RUN_KEYS}[datum.run][datum.token_index] == {SELECTED}")
    base = _flattened(base).transform_filter(f"{RUN_KEYS}[datum.run][datum.other] == {PAIRED}")
    base = base.encode(
        x=_x(_longest(comparison), SIMILARITY, cells=False),
        y=alt.Y("similarity:Q", title=SIMILARITY.unit, scale=alt.Scale(zero=False), axis=alt.Axis(format=SIMILARITY.format)),
        detail="run:N",
        tooltip=[
            alt.Tooltip("run_label:N", title=comparison.differs),
            alt.Tooltip("layer:O"),
            alt.Tooltip("similarity:Q", format=SIMILARITY.format),
        ],
        **_run_encoding(comparison),
    )
    colour = {} if len(comparison.runs) > 1 else {"color": ACCENT}
    baseline = {} if len(comparison.runs) > 1 else {"color": BASELINE_COLOURS[0]}
    lines = [
        base.mark_line(strokeWidth=2.5, **colour),
        base.mark_point(filled=True, size=30, **colour).encode(strokeDash=alt.value([1, 0])),
        base.transform_filter("isValid(datum.anisotropy)")
        .mark_line(strokeWidth=1.6, opacity=0.8, **baseline)
        .encode(
            y=alt.Y("anisotropy:Q", scale=alt.Scale(zero=False)),
            strokeDash=alt.value(list(ANISOTROPY_DASH)),
            tooltip=[alt.Tooltip("run_label:N", title=comparison.differs), alt.Tooltip("layer:O"),
                     alt.Tooltip("anisotropy:Q", title=ANISOTROPY.name, format=ANISOTROPY.format)],
        ),
    ]
    second = f"({PAIRED} >= 0 ? {LABELS}[{PAIRED}] : 'shift+click a second token')"
    title = alt.Title(
        alt.expr(f"[{SIMILARITY.title!r}, {LABELS}[{SELECTED}] + ' and ' + {second}]"),
        subtitle="dotted: the text's anisotropy, the mean cosine of any two of its tokens",
        anchor="start",
    )
    return alt.layer(*lines, title=title, **LINE_SIZE)


def similarity_heatmap(comparison: Comparison, number: int = 0) -> alt.LayerChart:
    """Every token × every token of one run at the slider's layer, the pair's two cells outlined. Reads
    `similarity`; one heatmap costs T² cells, drawn from the T rows of its layer only."""
    run = comparison.runs[number]
    size = len(run.tokens)
    layer = f"min({LAYER}, {len(run.layers) - 1})"  # a shallower run shows its last layer past its depth
    keys, names = f"{RUN_KEYS}[{number}]", f"{RUN_LABELS}[{number}]"
    cell = max(3, min(16, 480 // size))
    axis = {
        "labelExpr": f"{names}[datum.value]",
        "labelFontSize": 10 if cell >= 10 else 8,
        "labelOverlap": cell < 10,
        "ticks": False,
        "domain": False,
    }
    base = alt.Chart().encode(
        x=alt.X("other:O", title=None, axis=alt.Axis(labelAngle=-90, **axis)),
        y=alt.Y("token_index:O", title=None, axis=alt.Axis(**axis)),
    )
    lowest = min(float(r.similarity.values.min()) for r in comparison.runs if r.similarity is not None)
    cells = _flattened(base).transform_calculate(token=f"{names}[datum.token_index]", other_token=f"{names}[datum.other]")
    cells = cells.mark_rect().encode(
        color=alt.Color(
            "similarity:Q",
            scale=alt.Scale(scheme="viridis", domain=[min(lowest, 0.0), 1.0]),
            legend=alt.Legend(orient="right", format=SIMILARITY.format, title="cosine"),
        ),
        tooltip=[
            alt.Tooltip("token:N"),
            alt.Tooltip("other_token:N", title="other"),
            alt.Tooltip("similarity:Q", format=SIMILARITY.format),
        ],
    )
    pair_rows = base.transform_calculate(key=f"{keys}[datum.token_index]").transform_filter(
        f"datum.key == {SELECTED} || datum.key == {PAIRED}"
    )
    pair = _flattened(pair_rows).transform_calculate(other_key=f"{keys}[datum.other]").transform_filter(
        f"datum.other_key == (datum.key == {SELECTED} ? {PAIRED} : {SELECTED})"
    )
    outline = pair.mark_rect(fill=None, stroke=ACCENT, strokeWidth=2)
    prefix = f"{comparison.labels[number]}: " if len(comparison.runs) > 1 else ""
    title = alt.Title(alt.expr(f"{prefix + 'similarity of every token pair at layer '!r} + {layer}"), anchor="start")
    chart = alt.layer(cells, outline, data=alt.NamedData(SIMILARITY_DATA), title=title, width=cell * size, height=cell * size)
    return chart.transform_filter(f"datum.run == {number} && datum.layer == {layer}")


def pair_params(comparison: Comparison, paired: int = -1, slider: bool = True, layer: int | None = None) -> list[alt.Parameter]:
    """The `paired` token (-1: none), every run's token keys and labels and, with `slider`, the similarity
    heatmap's layer (`layer`, by default the last)."""
    labels = [[token_label(t.index, t.text) for t in run.tokens] for run in comparison.runs]
    params = [
        alt.param(name=PAIRED, value=paired),
        alt.param(name=RUN_KEYS, value=[keys.tolist() for keys in comparison.keys]),
        alt.param(name=RUN_LABELS, value=labels),
    ]
    if slider:
        last = len(_longest(comparison).layers) - 1
        bind = alt.binding_range(min=0, max=last, step=1, name="similarity at layer ")
        params.append(alt.param(name=LAYER, value=last if layer is None else layer, bind=bind))
    return params


def _similarity_maps(comparison: Comparison) -> alt.HConcatChart:
    """Every run's similarity heatmap, side by side on one colour scale."""
    maps = alt.hconcat(*(similarity_heatmap(comparison, n) for n in range(len(comparison.runs))), spacing=40)
    return maps.resolve_scale(color="shared")


def pair_charts(comparison: Comparison, paired: int = -1, token: int | str | None = None) -> dict[str, alt.TopLevelMixin]:
    """The page's pair charts: `pair` (the pair's similarity against the layer) and `similarity` (every run's
    token × token heatmap, with the layer slider), naming their data."""
    first = comparison.runs[0]
    pair = _finish(pair_chart(comparison), first, token).add_params(*pair_params(comparison, paired, slider=False))
    maps = _finish(_similarity_maps(comparison), first, token).add_params(*pair_params(comparison, paired))
    return {"pair": pair.properties(autosize=RESIZE), "similarity": maps.properties(autosize=RESIZE)}


def pair_figure(comparison: Comparison, first: int | str, second: int | str) -> alt.TopLevelMixin:
    """Two tokens of run A (indices or texts; the same text twice means its first two occurrences): their
    similarity against the layer, a line per run, beside every run's token × token heatmap at the layer where
    run A's pair is least alike (a slider moves it in HTML)."""
    run = comparison.runs[0]
    p = run.token_index(first)
    q = token_index(run.tokens, second, other_than=p)
    apart = int(np.argmin(run.pair(p, q).values))
    chart = alt.hconcat(pair_chart(comparison), _similarity_maps(comparison), spacing=40).resolve_scale(
        color="independent", strokeDash="independent"
    )
    chart = _finish(chart, run, p).add_params(*pair_params(comparison, q, layer=apart))
    return _attach(chart, {SIMILARITY_DATA: similarity_rows(comparison)})


def page_specs(comparison: Comparison, token: int | str | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """What the page draws for one run or several (run A first): every chart's Vega-Lite spec and the datasets
    once. Runs that carry their similarity add `pair` and `similarity`; runs that carry their attribution add the
    panel of which heads moved the token (`views.attribution.CHARTS`)."""
    from .attribution import attribution_charts, attribution_datasets  # it builds on this module
    runs = comparison.runs
    if len(runs) == 1:
        specs, data = chart_specs(runs[0], token)
    else:
        built = comparison_charts(comparison)
        specs = {name: _finish(chart, runs[0], token).to_dict() for name, chart in built.items()}
        data = comparison_datasets(comparison)
    if all(run.similarity is not None for run in runs):
        specs |= {name: chart.to_dict() for name, chart in pair_charts(comparison, token=token).items()}
        data[SIMILARITY_DATA] = similarity_rows(comparison)
    if all(run.attribution is not None for run in runs):
        specs |= {name: chart.to_dict() for name, chart in attribution_charts(comparison, token).items()}
        data |= attribution_datasets(comparison)
    return specs, data
