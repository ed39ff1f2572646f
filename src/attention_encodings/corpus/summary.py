"""The corpus at large: every measure summarised by word class (DuckDB over the Parquet shards, never the whole
table in memory), the mean and spread of the tapped vectors, and the corpus anisotropy, exact from sums."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..models import usable_cpus
from .words import CONTENT, FUNCTION, UPOS

COLUMNS = ("group", "layer", "measure", "n", "mean", "std", "q10", "q25", "median", "q75", "q90")
QUANTILES = {"q10": 0.1, "q25": 0.25, "median": 0.5, "q75": 0.75, "q90": 0.9}
ANISOTROPY = "anisotropy"
"""The summary's baseline row: the mean cosine between non-special tokens of different texts, per layer."""


def group_order(groups: list[str]) -> list[str]:
    """Groups as the summary lists them: all, function, content, each UPOS (in UD's order), special."""
    known = ["all", "function", "content", *UPOS]
    return (
        [g for g in known if g in groups]
        + sorted(set(groups) - set(known) - {"special"})
        + (["special"] if "special" in groups else [])
    )


def summarise(tokens: Path, measures: list[str], temporary: Path) -> pd.DataFrame:
    """One row per (group, layer, measure) with n, mean, std (population) and exact quantiles (linear
    interpolation, as pandas), computed by DuckDB over `tokens/*.parquet`. Groups: `all` (every non-special
    token), each UPOS, `function` and `content`, and `special`; nulls (overlap at the last layer) are left out."""
    import duckdb

    parts = sorted(tokens.glob("*.parquet"))
    if not parts:
        return pd.DataFrame(columns=list(COLUMNS))
    listed = ", ".join("'" + p.as_posix().replace("'", "''") + "'" for p in parts)
    function, content = _sql_list(FUNCTION), _sql_list(CONTENT)
    quantiles = ", ".join(f"q[{i + 1}] AS {name}" for i, name in enumerate(QUANTILES))
    levels = ", ".join(str(q) for q in QUANTILES.values())
    config = {"threads": usable_cpus(), "temp_directory": str(temporary)}
    frames = []
    with duckdb.connect(config=config) as connection:
        for measure in measures:
            query = f"""
                WITH rows AS (
                    SELECT special, upos, layer, CAST("{measure}" AS DOUBLE) AS value
                    FROM read_parquet([{listed}]) WHERE "{measure}" IS NOT NULL
                ), grouped AS (
                    SELECT CASE WHEN special THEN 'special' ELSE 'all' END AS "group", layer, value FROM rows
                    UNION ALL SELECT upos, layer, value FROM rows WHERE NOT special AND upos IS NOT NULL
                    UNION ALL SELECT CASE WHEN upos IN ({function}) THEN 'function' ELSE 'content' END, layer, value
                        FROM rows WHERE NOT special AND upos IN ({function}, {content})
                ), summed AS (
                    SELECT "group", layer, count(*) AS n, avg(value) AS mean, stddev_pop(value) AS std,
                        quantile_cont(value, [{levels}]) AS q
                    FROM grouped GROUP BY "group", layer
                )
                SELECT "group", layer, '{measure}' AS measure, n, mean, std, {quantiles} FROM summed
            """
            frames.append(connection.sql(query).df())
    return ordered(pd.concat(frames, ignore_index=True), measures)


def ordered(summary: pd.DataFrame, measures: list[str]) -> pd.DataFrame:
    """Rows by group (see `group_order`), then measure, then layer; the columns of `COLUMNS`."""
    groups = group_order(summary["group"].unique().tolist())
    summary = summary.assign(
        _group=summary["group"].map({g: i for i, g in enumerate(groups)}),
        _measure=summary["measure"].map({m: i for i, m in enumerate([*measures, ANISOTROPY])}),
    )
    summary = summary.sort_values(["_group", "_measure", "layer"], kind="stable").drop(columns=["_group", "_measure"])
    summary["n"] = summary["n"].astype("int64")
    summary["layer"] = summary["layer"].astype("int64")
    return summary[list(COLUMNS)].reset_index(drop=True)


def anisotropy_rows(sums: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per layer, the mean cosine over every ordered pair of non-special tokens from different texts, exactly:
    with S = Σu over the corpus and s_t = Σu over text t, the pairs' cosines add up to |S|² − Σ_t |s_t|², and
    there are n² − Σ_t n_t² pairs."""
    count = float(sums["count"])
    pairs = count * count - float(sums["text_count_sq"])
    total = (sums["unit_sum"] ** 2).sum(axis=-1) - sums["text_unit_sq"]
    layers = len(total)
    mean = total / pairs if pairs > 0 else np.full(layers, np.nan)
    nothing = np.full(layers, np.nan)
    columns = {"group": "all", "layer": np.arange(layers), "measure": ANISOTROPY, "n": np.full(layers, int(pairs)), "mean": mean}
    columns |= {name: nothing for name in ("std", *QUANTILES)}
    return pd.DataFrame(columns)[list(COLUMNS)]


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)
