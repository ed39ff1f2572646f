"""The corpus report's attribution charts, as Vega-Lite specs (Altair): per broad group, a layer × part heatmap of
the mean share of the cosine, on a diverging scale centred at 0 (toward the original encoding, or away)."""

from __future__ import annotations

import altair as alt
import pandas as pd

from ..names import SHARE_MEASURE as SHARE
from .charts import FONT
from .corpus import BROAD

COLOUR_CONSTANT = 0.002
"""Where the symlog colour scale turns from linear to logarithmic: the residual's share (near 1) and a head's (near
0.01) then both read on one scale."""

TICKS = (-1, -0.1, -0.01, 0, 0.01, 0.1, 1)
"""The colour legend's labels: powers of ten, which the symlog scale spaces evenly."""


def share_heatmap(summary: pd.DataFrame, group: str) -> alt.Chart:
    """Layers (rows) × parts (columns) for one group: each cell the mean share of that part over the group's
    tokens, blue toward the token's original encoding, red away from it."""
    data = summary[(summary["measure"] == SHARE) & (summary["group"] == group)]
    parts = data["component"].drop_duplicates().tolist()
    layers = sorted(data["layer"].unique().tolist())
    largest = float(data["mean"].abs().max()) if len(data) else 1.0
    colour = alt.Color(
        "mean:Q",
        title="mean share",
        scale=alt.Scale(type="symlog", constant=COLOUR_CONSTANT, scheme="redblue", domain=[-largest, largest], domainMid=0),
        legend=alt.Legend(values=[v for v in TICKS if abs(v) <= largest], format="~g", gradientLength=180),
    )
    n = int(data["n"].max()) if len(data) else 0
    return (
        alt.Chart(data)
        .mark_rect()
        .encode(
            x=alt.X("component:N", sort=parts, title=None, axis=alt.Axis(labelAngle=-45)),
            y=alt.Y("layer:O", sort=layers, title="layer"),
            color=colour,
            tooltip=[
                alt.Tooltip("layer:O"),
                alt.Tooltip("component:N", title="part"),
                alt.Tooltip("mean:Q", title="mean share", format=".4f"),
                alt.Tooltip("median:Q", title="median", format=".4f"),
                alt.Tooltip("q25:Q", format=".4f"),
                alt.Tooltip("q75:Q", format=".4f"),
                alt.Tooltip("n:Q", format=","),
            ],
        )
        .properties(
            width=22 * len(parts),
            height=max(90, 16 * len(layers)),
            title=alt.Title(f"{group} (n = {n:,})", anchor="start"),
        )
    )


def heads_charts(summary: pd.DataFrame) -> dict[str, alt.TopLevelMixin]:
    """The report's heatmaps by name, `heads_<group>` for each broad group the summary has share rows for."""
    present = set(summary.loc[summary["measure"] == SHARE, "group"])
    charts = {f"heads_{group}": share_heatmap(summary, group) for group in BROAD if group in present}
    return {name: chart.configure(font=FONT).configure_view(stroke=None) for name, chart in charts.items()}
