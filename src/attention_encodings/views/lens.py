"""The charts of a learned lens's evaluation (`eval.csv`), as Vega-Lite specs (Altair): each held-out measure
against the layer, the learned lens against the untrained reading, and the learning curve."""

from __future__ import annotations

import altair as alt
import pandas as pd

from .charts import LINE_SIZE, MUTED

SERIES_COLOURS = ("#d9480f", MUTED, "#1971c2", "#212529")

CHARTS: dict[str, dict[str, tuple[str, dict[str, str], bool]]] = {
    "final": {
        "lens_kl": ("KL from the final prediction (bits, mean)", {"kl_bits": "learned", "kl_bits_untrained": "untrained"}, False),
        "lens_top1": (
            "Top-1 agreement with the final prediction",
            {"top1_agreement": "learned", "top1_agreement_untrained": "untrained"},
            False,
        ),
        "lens_rank": ("Median rank of the target (symlog)", {"median_tuned_rank": "tuned_rank", "median_head_rank": "head_rank"}, True),
        "lens_depth": ("Prediction depth: share of tokens", {"depth_share": "learned", "depth_share_untrained": "untrained"}, False),
    },
    "embedding": {
        "lens_top1": (
            "Top-1 and top-10 accuracy of the token's own encoding",
            {
                "top1_accuracy": "learned top-1",
                "top1_accuracy_untrained": "untrained top-1",
                "top10_accuracy": "learned top-10",
                "top10_accuracy_untrained": "untrained top-10",
            },
            False,
        ),
        "lens_rank": ("Median rank of the token's own encoding (symlog)", {"median_probe_rank": "probe_rank", "median_rank": "rank"}, True),
        "lens_cosine": ("Mean cosine to the token's own encoding", {"mean_probe_cosine": "probe_cosine", "mean_cosine": "cosine"}, False),
    },
}
"""Per target, each chart's title and the eval.csv columns it draws (column: legend label), and whether symlog."""
COMMON: dict[str, tuple[str, dict[str, str], bool]] = {
    "lens_r2": ("Held-out R² of T_l(x) against the target", {"r2_vs_identity": "vs identity", "r2_vs_mean": "vs mean only"}, False),
    "lens_learning": (
        "Learning curve: held-out R² vs mean only",
        {"r2_vs_mean_quarter": "¼ of the fit split", "r2_vs_mean_half": "½", "r2_vs_mean": "all"},
        False,
    ),
}


def lens_charts(frame: pd.DataFrame, target: str) -> dict[str, alt.Chart]:
    """Every chart of `frame` (`eval.csv`) for a lens with `target`, by name."""
    return {
        name: _lines(frame, title, columns, symlog)
        for name, (title, columns, symlog) in {**COMMON, **CHARTS[target]}.items()
        if any(column in frame for column in columns)
    }


def _lines(frame: pd.DataFrame, title: str, columns: dict[str, str], symlog: bool) -> alt.Chart:
    present = [column for column in columns if column in frame]
    long = frame.melt(id_vars="layer", value_vars=present, var_name="column", value_name="value")
    long["series"] = long["column"].map(columns)
    labels = [columns[column] for column in present]
    scale = alt.Scale(type="symlog") if symlog else alt.Scale(zero=False)
    return (
        alt.Chart(long, title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:Q", axis=alt.Axis(format="d", tickMinStep=1)),
            y=alt.Y("value:Q", title=None, scale=scale),
            color=alt.Color(
                "series:N", sort=labels, scale=alt.Scale(domain=labels, range=list(SERIES_COLOURS[: len(labels)])), title=None
            ),
            tooltip=["series:N", "layer:Q", alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(**LINE_SIZE)
    )
