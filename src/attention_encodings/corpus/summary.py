"""The corpus at large: every measure summarised by word class (DuckDB over the Parquet shards, never the whole
table in memory), the mean and spread of the tapped vectors, and the corpus anisotropy, exact from sums."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..models import usable_cpus
from ..names import SHARE_MEASURE as SHARE
from .words import CONTENT, FUNCTION, UPOS

COLUMNS = ("group", "layer", "measure", "component", "n", "mean", "std", "q10", "q25", "median", "q75", "q90")
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


def parquet_list(folder: Path) -> str | None:
    """The Parquet parts of a dataset folder as a DuckDB list literal, or None when it has none."""
    parts = sorted(folder.glob("*.parquet"))
    return ", ".join("'" + p.as_posix().replace("'", "''") + "'" for p in parts) if parts else None


def connect(temporary: Path):
    """A DuckDB connection on every usable core, spilling to `temporary`."""
    import duckdb

    return duckdb.connect(config={"threads": usable_cpus(), "temp_directory": str(temporary)})


def token_groups(tokens: str) -> str:
    """SQL: each non-special token's word class at layer 0 (text_index, token_index, special, upos), from the
    token parts `tokens` (a `parquet_list`), to join other datasets with."""
    return f"SELECT text_index, token_index, special, upos FROM read_parquet([{tokens}]) WHERE layer = 0"


def summarise(tokens: Path, measures: list[str], temporary: Path, heads: Path | None = None) -> pd.DataFrame:
    """One row per (group, layer, measure) with n, mean, std (population) and exact quantiles (linear
    interpolation, as pandas), computed by DuckDB over `tokens/*.parquet`. Groups: `all` (every non-special
    token), each UPOS, `function` and `content`, and `special`; nulls (overlap at the last layer) are left out.
    With attribution rows in `heads`, also one row per (group, layer, component) for their `share`."""
    listed = parquet_list(tokens)
    if listed is None:
        return pd.DataFrame(columns=list(COLUMNS))
    frames = []
    components = None
    with connect(temporary) as connection:
        for measure in measures:
            rows = f"""SELECT special, upos, layer, NULL AS component, CAST("{measure}" AS DOUBLE) AS value
                FROM read_parquet([{listed}]) WHERE "{measure}" IS NOT NULL"""
            frames.append(connection.sql(_grouped(rows, measure)).df())
        parts = None if heads is None else parquet_list(heads)
        if parts is not None:
            rows = f"""SELECT t.special, t.upos, h.layer, CAST(h.component AS VARCHAR) AS component,
                    CAST(h.share AS DOUBLE) AS value
                FROM read_parquet([{parts}]) h JOIN ({token_groups(listed)}) t USING (text_index, token_index)"""
            frames.append(connection.sql(_grouped(rows, SHARE)).df())
            first = sorted(heads.glob("*.parquet"))[0]
            components = _components(first)
    return ordered(pd.concat(frames, ignore_index=True), measures, components)


def _grouped(rows: str, measure: str) -> str:
    """SQL: the summary's rows of `measure` over `rows` (special, upos, layer, component, value), per group."""
    function, content = _sql_list(FUNCTION), _sql_list(CONTENT)
    quantiles = ", ".join(f"q[{i + 1}] AS {name}" for i, name in enumerate(QUANTILES))
    levels = ", ".join(str(q) for q in QUANTILES.values())
    return f"""
        WITH rows AS ({rows}), grouped AS (
            SELECT CASE WHEN special THEN 'special' ELSE 'all' END AS "group", layer, component, value FROM rows
            UNION ALL SELECT upos, layer, component, value FROM rows WHERE NOT special AND upos IS NOT NULL
            UNION ALL SELECT CASE WHEN upos IN ({function}) THEN 'function' ELSE 'content' END, layer, component, value
                FROM rows WHERE NOT special AND upos IN ({function}, {content})
        ), summed AS (
            SELECT "group", layer, component, count(*) AS n, avg(value) AS mean, stddev_pop(value) AS std,
                quantile_cont(value, [{levels}]) AS q
            FROM grouped GROUP BY "group", layer, component
        )
        SELECT "group", layer, '{measure}' AS measure, component, n, mean, std, {quantiles} FROM summed
    """


def _components(part: Path) -> list[str]:
    """The parts of an attribution, in their order (the dictionary of a `heads` part's component column)."""
    import pyarrow.parquet as pq

    column = pq.read_table(part, columns=["component"]).column("component")
    return [str(v) for v in column.chunk(0).dictionary.to_pylist()] if column.num_chunks else []


def ordered(summary: pd.DataFrame, measures: list[str], components: list[str] | None = None) -> pd.DataFrame:
    """Rows by group (see `group_order`), then measure, then component (in the attribution's order, by default
    the order they come in), then layer; the columns of `COLUMNS`."""
    groups = group_order(summary["group"].unique().tolist())
    if "component" not in summary:
        summary = summary.assign(component=None)
    summary = summary.assign(
        _group=summary["group"].map({g: i for i, g in enumerate(groups)}),
        _measure=summary["measure"].map({m: i for i, m in enumerate([*measures, SHARE, ANISOTROPY])}),
        _component=summary["component"].map({c: i for i, c in enumerate(components)}).fillna(-1)
        if components is not None
        else pd.factorize(summary["component"])[0],
    )
    summary = summary.sort_values(["_group", "_measure", "_component", "layer"], kind="stable")
    summary = summary.drop(columns=["_group", "_measure", "_component"])
    summary["n"] = summary["n"].astype("int64")
    summary["layer"] = summary["layer"].astype("int64")
    summary["component"] = summary["component"].astype("string")
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
    columns = {"group": "all", "layer": np.arange(layers), "measure": ANISOTROPY, "component": None,
               "n": np.full(layers, int(pairs)), "mean": mean}  # fmt: skip
    columns |= {name: nothing for name in ("std", *QUANTILES)}
    return pd.DataFrame(columns)[list(COLUMNS)]


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)
