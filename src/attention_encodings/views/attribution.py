"""Which heads moved the selected token, as charts: the cosine's change per layer split into the residual term,
the heads and the other parts; a layer × part heatmap of the cosine's shares; and, for one chosen head, each
source token's share and norm (its attention weights shade the page's token chips).

They read three named datasets built from each run's `Attribution` (`analyze(..., attribution=True)`), with
each row's run and run A's token (`key`), as the comparison charts do; the selected token is the `selected`
parameter, the chosen head `head_layer` and `head`, the head under the pointer `hovered_layer` and
`hovered_head` (-1: none), so the page changes any of them without asking the server.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import torch

from ..analysis import Analysis
from ..attribution import TOP_SOURCES, Attribution, part_heads
from ..comparison import Comparison, compare
from ..display import shown
from ..errors import OptionError
from .charts import ACCENT, HOVER, HOVERED, LABELS, SELECTED, _attach, _finish, is_token, thinned
from .compare import KEY, RESIZE, RUN_KEYS, RUN_LABELS, _rows, _runs_frame, pair_params

SHARES_DATA = "head_shares"
"""Named dataset: one row per (run, layer, part, token): the part's share of the cosine and, for heads, the
ablation rank, the real rank and the three sources the head attended to most."""
CHANGE_DATA = "head_change"
"""Named dataset: one row per (run, layer, token, series): the cosine's change and its terms (`SERIES`)."""
SOURCES_DATA = "head_sources"
"""Named dataset: one row per (run, layer, head, token), with `weights`, `shares` and `norms` over every source
token (charts flatten the one row they show)."""
CHARTS = ("heads_change", "heads_shares", "heads_sources")
"""The panel's charts, by the names the page and `attribution_charts` give them."""

HEAD_LAYER = "head_layer"
"""Vega parameter: the chosen head's layer (1..N), -1 for none."""
HEAD = "head"
"""Vega parameter: the chosen head (0..H-1), -1 for none."""
HOVERED_LAYER = "hovered_layer"
HOVERED_HEAD = "hovered_head"
"""Vega parameters: the head cell under the pointer, -1 for none."""

SERIES = {"change": "#212529", "residual": "#868e96", "heads": ACCENT, "other parts": "#2f9e44"}
"""The change chart's lines and their colours: the cosine's change, the residual term (`Attribution.delta`), the
sum of the heads, and the rest (attn_bias, mlp, norm_bias, normalization); the last three sum to the change."""
DIVERGING = "redblue"
"""The heatmap's scheme: red moves the token away from its original encoding, blue toward it."""
SYMLOG_CONSTANT = 0.001
"""The heatmap's colour scale is symlog, linear within ±this: heads move a cosine by thousandths while the
residual carries most of it, and a linear scale would leave every head white."""
CELL = (24, 16)
"""A heatmap cell's width and height, in pixels."""
DIGITS = 4
"""Significant digits kept per source row (relative to its largest value): what a bar can show."""


def check_head(comparison: Comparison, layer: int | None, head: int | None) -> None:
    """A one-line `OptionError` unless `layer` and `head` are both None or name a head of every run."""
    if (layer is None) != (head is None):
        raise OptionError("a head is named by its layer and its number: give both (--layer L --head H) or neither")
    if layer is None or head is None:
        return
    for run in comparison.runs:
        found = _found(run)
        if layer not in found.layers:
            raise OptionError(f"layer must be one of 1..{len(found.layers)} (the blocks); got {layer}")
        if not 0 <= head < found.num_heads:
            raise OptionError(f"head must be one of 0..{found.num_heads - 1} (the model's heads); got {head}")


def _found(run: Analysis) -> Attribution:
    """The run's attribution, or a one-line error saying it has none."""
    if run.attribution is None:
        raise OptionError("this analysis has no attribution; analyse with attribution=True")
    return run.attribution


def _columns(found: Attribution) -> np.ndarray:
    """Each token index's column in the attribution's token axis (-1 where it has none)."""
    columns = np.full(max(t.index for t in found.sources) + 1, -1)
    columns[[t.index for t in found.tokens]] = np.arange(len(found.tokens))
    return columns


def _top_sources(found: Attribution) -> np.ndarray | None:
    """(N, H, T) each head's three sources with the most attention, as text (`flies 0.42, [CLS] 0.35, …`)."""
    if found.attention is None:
        return None
    weights, places = torch.from_numpy(found.attention).topk(min(TOP_SOURCES, found.attention.shape[-1]), dim=-1)
    texts = np.array([shown(t.text) for t in found.sources], dtype=object)[places.numpy()]
    listed = texts + " " + np.char.mod("%.2f", weights.numpy()).astype(object)
    joined = listed[..., 0]
    for place in range(1, listed.shape[-1]):
        joined = joined + ", " + listed[..., place]
    return joined


def share_rows(run: Analysis) -> pd.DataFrame:
    """The `head_shares` rows of one run (`Attribution.to_frame`, with each part's column `part`, the head's
    number, the real `rank`, and the head's top sources)."""
    found = _found(run)
    frame = found.to_frame().drop(columns="token")
    frame["part"] = frame.component.map({name: place for place, name in enumerate(found.components)})
    heads = part_heads(frame.part.to_numpy(), found.num_heads)
    is_head = heads >= 0
    frame["head"] = np.where(is_head, heads, None)
    column = _columns(found)[frame.token_index.to_numpy()]
    frame["rank"] = found.rank[frame.layer.to_numpy(), column]
    top = _top_sources(found)
    if top is not None:
        layer, head = frame.layer.to_numpy() - 1, np.where(is_head, heads, 0)
        frame["sources"] = np.where(is_head, top[layer, head, column], None)
    return frame


def change_rows(run: Analysis) -> pd.DataFrame:
    """The `head_change` rows of one run: per layer 1..N and token, the cosine's change and its terms as
    `Attribution.terms` (and `delta`) define them: the residual term, the heads' sum and the other parts'."""
    found = _found(run)
    terms = found.terms()
    heads = terms[:, 1 : 1 + found.num_heads].sum(axis=1)
    series = {
        "change": terms.sum(axis=1),
        "residual": terms[:, 0],
        "heads": heads,
        "other parts": terms[:, 1 + found.num_heads :].sum(axis=1),
    }
    values = np.stack(list(series.values()))  # (series, N, T)
    axes = (np.arange(len(series)), np.arange(len(found.layers)), np.arange(len(found.tokens)))
    name, layer, token = np.meshgrid(*axes, indexing="ij")
    return pd.DataFrame(
        {
            "series": np.array(list(series), dtype=object)[name.reshape(-1)],
            "order": name.reshape(-1),
            "layer": layer.reshape(-1) + 1,
            "token_index": np.array([t.index for t in found.tokens])[token.reshape(-1)],
            "value": values.reshape(-1),
        }
    )


def _rounded(values: np.ndarray) -> np.ndarray:
    """`values` to `DIGITS` significant digits of each last-axis row's largest magnitude (short JSON)."""
    top = np.abs(values).max(axis=-1, keepdims=True)
    decimals = np.maximum(DIGITS - 1 - np.floor(np.log10(np.where(top > 0, top, 1.0))), 0)
    scale = 10.0**decimals
    return np.round(values.astype(np.float64) * scale) / scale


def source_rows(run: Analysis) -> pd.DataFrame:
    """The `head_sources` rows of one run: per (layer, head, token) every source's attention weight, share of the
    cosine and norm, as lists; empty where the attribution has no detail (see `Attribution.note`)."""
    found = _found(run)
    if found.attention is None or found.source_shares is None or found.source_norms is None:
        return pd.DataFrame({"token_index": pd.Series([], dtype=int)})
    layers, heads, tokens, sources = found.attention.shape
    grid = np.meshgrid(np.arange(layers), np.arange(heads), np.arange(tokens), indexing="ij")
    layer, head, token = (axis.reshape(-1) for axis in grid)
    listed = {
        name: list(_rounded(values).reshape(-1, sources).tolist())
        for name, values in (("weights", found.attention), ("shares", found.source_shares), ("norms", found.source_norms))
    }
    index = np.array([t.index for t in found.tokens])[token]
    return pd.DataFrame({"layer": layer + 1, "head": head, "token_index": index, **listed})


def attribution_datasets(comparison: Comparison) -> dict[str, list[dict[str, Any]]]:
    """The panel's datasets for every run, one after another, with `run`, `run_label` and `key`; a missing value
    (the ablation rank of a part that is not a head) is left out of its row, so tooltips skip it."""
    shares = [{k: v for k, v in row.items() if v is not None} for row in _rows(_runs_frame(comparison, share_rows))]
    return {
        SHARES_DATA: shares,
        CHANGE_DATA: _rows(_runs_frame(comparison, change_rows)),
        SOURCES_DATA: _rows(_runs_frame(comparison, source_rows)),
    }


def head_params(layer: int = -1, head: int = -1) -> list[alt.Parameter]:
    """The chosen head (-1, -1: none) and the hovered one (none)."""
    return [
        alt.param(name=HEAD_LAYER, value=layer),
        alt.param(name=HEAD, value=head),
        alt.param(name=HOVERED_LAYER, value=-1),
        alt.param(name=HOVERED_HEAD, value=-1),
    ]


def _prefix(comparison: Comparison, number: int) -> str:
    """The run's label before its titles, when there are several runs."""
    return f"{comparison.labels[number]}: " if len(comparison.runs) > 1 else ""


def _token_title(text: str, note: str = "") -> alt.Title:
    """A title naming the selected token on its second line (`note` after it)."""
    return alt.Title(alt.expr(f"[{text!r}, 'token ' + {LABELS}[{SELECTED}] + {note!r}]"), anchor="start")


def _of_run(number: int) -> str:
    """The Vega filter: the rows of run `number` for the selected token."""
    return f"datum.run == {number} && {is_token(SELECTED, KEY)}"


def change_chart(comparison: Comparison, number: int = 0) -> alt.LayerChart:
    """One run's cosine change per layer for the selected token, split into the residual term, the heads' sum and
    the other parts, with a rule at the chosen head's layer (and at the hovered one's). Reads `head_change`."""
    found = _found(comparison.runs[number])
    base = alt.Chart(alt.NamedData(CHANGE_DATA)).transform_filter(_of_run(number))
    colour = alt.Color(
        "series:N",
        scale=alt.Scale(domain=list(SERIES), range=list(SERIES.values())),
        legend=alt.Legend(orient="bottom", title=None, direction="horizontal", symbolType="stroke", symbolStrokeWidth=2.5),
    )
    x = alt.X("layer:Q", title="layer", scale=alt.Scale(domain=[1, len(found.layers)]),
              axis=alt.Axis(values=thinned(found.layers, 16), format="d"))
    lines = base.encode(
        x=x,
        y=alt.Y("value:Q", title="change of the cosine"),
        color=colour,
        detail="series:N",
        tooltip=[
            alt.Tooltip("series:N", title="part"), alt.Tooltip("layer:O"), alt.Tooltip("value:Q", title="change", format="+.4f")
        ],
    )
    zero = alt.Chart().mark_rule(color="#ced4da").encode(y=alt.datum(0))
    chosen = base.transform_filter(f"datum.series == 'change' && datum.layer == {HEAD_LAYER}")
    hovered = base.transform_filter(f"datum.series == 'change' && datum.layer == {HOVERED_LAYER}")
    return alt.layer(
        zero,
        chosen.mark_rule(color=ACCENT, strokeDash=[4, 3]).encode(x=x),
        hovered.mark_rule(color=HOVER).encode(x=x),
        lines.mark_line(strokeWidth=2),
        lines.mark_point(filled=True, size=24),
        title=_token_title(f"{_prefix(comparison, number)}The cosine's change per layer, by part"),
        width=330,
        height=180,
    )


def _largest(comparison: Comparison) -> float:
    """The largest |share| of any run: the heatmaps' colour domain runs from minus it to it."""
    return max(float(np.nanmax(np.abs(_found(run).shares), initial=0.0)) for run in comparison.runs) or 1.0


def _legend_values(largest: float) -> list[float]:
    """Symmetric ticks for the symlog colour legend: 0, ±the constant and the powers of ten up to `largest`."""
    steps = [10.0**p for p in range(int(np.floor(np.log10(SYMLOG_CONSTANT))), 1) if 10.0**p <= largest]
    return [-v for v in reversed(steps)] + [0.0] + steps


def share_heatmap(comparison: Comparison, number: int = 0) -> alt.LayerChart:
    """One run's shares of the selected token's cosine: layers (rows) × parts (columns, in the tap's order), on a
    diverging symlog scale centred at 0; the chosen head's cell outlined, and the hovered one's. Reads
    `head_shares`."""
    found = _found(comparison.runs[number])
    largest = _largest(comparison)
    base = (
        alt.Chart(alt.NamedData(SHARES_DATA))
        .transform_filter(f"{_of_run(number)} && isValid(datum.share)")
        .encode(
            x=alt.X("component:N", sort=list(found.components), title=None, axis=alt.Axis(orient="top", labelAngle=-90)),
            y=alt.Y("layer:O", title="layer"),
        )
    )
    scale = alt.Scale(type="symlog", constant=SYMLOG_CONSTANT, scheme=DIVERGING, domain=[-largest, largest], domainMid=0)
    tooltip = [
        alt.Tooltip("component:N", title="part"),
        alt.Tooltip("layer:O"),
        alt.Tooltip("share:Q", title="share of the cosine", format="+.4f"),
        alt.Tooltip("ablation_rank:Q", title="rank without it", format="d"),
        alt.Tooltip("rank:Q", title="rank", format="d"),
        alt.Tooltip("sources:N", title="attended to most"),
    ]
    cells = base.mark_rect().encode(
        color=alt.Color(
            "share:Q", scale=scale, title="share", legend=alt.Legend(orient="right", values=_legend_values(largest), format="~r")
        ),
        tooltip=tooltip,
    )
    chosen = f"datum.layer == {HEAD_LAYER} && datum.head == {HEAD}"
    hovered = f"datum.layer == {HOVERED_LAYER} && datum.head == {HOVERED_HEAD}"
    outline = base.transform_filter(f"({chosen}) || ({hovered})").mark_rect(fill=None, strokeWidth=2.5).encode(
        stroke=alt.condition(chosen, alt.value(ACCENT), alt.value(HOVER)),
    )
    return alt.layer(
        cells,
        outline,
        title=_token_title(f"{_prefix(comparison, number)}Which parts moved its cosine"),
        width=CELL[0] * len(found.components),
        height=CELL[1] * len(found.layers),
    )


def source_bars(comparison: Comparison, number: int = 0) -> alt.VConcatChart:
    """For the chosen head and the selected token, each source token's signed share of the cosine and the norm of
    what it gave, one bar per source (the hovered token's outlined). Reads `head_sources`."""
    count = len(comparison.runs[number].tokens)
    base = (
        alt.Chart(alt.NamedData(SOURCES_DATA))
        .transform_filter(f"{_of_run(number)} && datum.layer == {HEAD_LAYER} && datum.head == {HEAD}")
        .transform_calculate(source="sequence(length(datum.weights))")
        .transform_flatten(["weights", "shares", "norms", "source"], as_=["weight", "share", "norm", "source"])
        .transform_calculate(
            source_label=f"{RUN_LABELS}[{number}][datum.source]", source_key=f"{RUN_KEYS}[{number}][datum.source]"
        )
    )
    x = alt.X("source_label:N", sort=alt.SortField("source"), title=None, axis=alt.Axis(labelAngle=-90))
    tooltip = [
        alt.Tooltip("source_label:N", title="source"),
        alt.Tooltip("weight:Q", title="attention", format=".3f"),
        alt.Tooltip("share:Q", title="share of the cosine", format="+.3~g"),
        alt.Tooltip("norm:Q", title="norm", format=".3~g"),
    ]
    outline = {
        "stroke": alt.condition(f"datum.source_key == {HOVERED}", alt.value(HOVER), alt.value(None)),
        "strokeWidth": alt.value(2),
    }
    width = max(200, 14 * count)
    share = base.mark_bar().encode(
        x=x.axis(None),
        y=alt.Y("share:Q", title="share"),
        color=alt.condition("datum.share >= 0", alt.value("#1c7ed6"), alt.value("#e03131")),
        tooltip=tooltip,
        **outline,
    )
    norm = base.mark_bar(color="#868e96").encode(x=x, y=alt.Y("norm:Q", title="norm"), tooltip=tooltip, **outline)
    named = f"{HEAD_LAYER} > 0 ? 'head ' + {HEAD_LAYER} + '.' + {HEAD} : 'no head chosen'"
    title = alt.Title(
        alt.expr(f"[{_prefix(comparison, number)!r} + 'What each source gave: ' + ({named}), 'token ' + {LABELS}[{SELECTED}]]"),
        anchor="start",
    )
    return alt.vconcat(share.properties(width=width, height=80), norm.properties(width=width, height=80), spacing=6, title=title)


def _side_by_side(comparison: Comparison, draw: Any) -> alt.HConcatChart | alt.TopLevelMixin:
    """`draw(comparison, n)` for every run n, side by side (one run: its chart alone)."""
    charts = [draw(comparison, number) for number in range(len(comparison.runs))]
    return charts[0] if len(charts) == 1 else alt.hconcat(*charts, spacing=40)


def _panel_params(comparison: Comparison, layer: int, head: int) -> list[alt.Parameter]:
    """The head parameters, and every run's token keys and labels (what the source bars name their tokens by)."""
    return [*head_params(layer, head), *[p for p in pair_params(comparison, slider=False) if p.name in (RUN_KEYS, RUN_LABELS)]]


def attribution_charts(comparison: Comparison, token: int | str | None = None) -> dict[str, alt.TopLevelMixin]:
    """The page's panel (`CHARTS`), each with the runs side by side, naming its data; no head chosen."""
    first = comparison.runs[0]
    drawn = {
        "heads_change": _side_by_side(comparison, change_chart).resolve_scale(color="shared"),
        "heads_shares": _side_by_side(comparison, share_heatmap).resolve_scale(color="shared"),
        "heads_sources": _side_by_side(comparison, source_bars).properties(autosize=RESIZE),
    }
    return {name: _finish(chart, first, token).add_params(*_panel_params(comparison, -1, -1)) for name, chart in drawn.items()}


def attribution_figure(
    results: Analysis | Comparison, token: int | str | None = None, layer: int | None = None, head: int | None = None
) -> alt.TopLevelMixin:
    """The panel as one figure: the change chart over the heatmap of shares, every run side by side, and with
    `layer` and `head` that head's source bars (a bad layer or head is a one-line `OptionError`)."""
    comparison = results if isinstance(results, Comparison) else compare([results])
    check_head(comparison, layer, head)
    parts: list[Any] = [_side_by_side(comparison, change_chart), _side_by_side(comparison, share_heatmap)]
    if layer is not None:
        parts.append(_side_by_side(comparison, source_bars))
    chart = alt.vconcat(*parts, spacing=30).resolve_scale(color="independent")
    first = comparison.runs[0]
    chart = _finish(chart, first, token).add_params(*_panel_params(comparison, layer or -1, -1 if head is None else head))
    return _attach(chart, attribution_datasets(comparison))
