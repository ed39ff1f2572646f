"""`heads.csv`: which heads separate function words from content words. Per (layer, head), the mean share of
function-word tokens minus that of content-word tokens, with a bootstrap 95 % interval that resamples texts (a
text's tokens are not independent of each other), never tokens.

The bootstrap is one matrix product: DuckDB adds each text's shares and counts up per (layer, head, group); a
(resamples × texts) matrix of multinomial counts (how often each text is drawn) times those sums gives every
resample's sums at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .summary import connect, parquet_list, token_groups
from .words import CONTENT, FUNCTION

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
DRAW_VALUES = 1 << 23
"""Resamples are drawn and multiplied in blocks of at most this many counts (resamples × texts), so memory stays
bounded however many texts the corpus has; the blocks draw exactly the counts one whole draw would."""
MIN_TEXTS = 2
"""With fewer texts every resample is the same text set, so the interval is left empty (NaN) rather than a point."""
COLUMNS = ("layer", "head", "difference", "low", "high", "function_mean", "content_mean", "function_n", "content_n")


def bootstrap_difference(
    sums: np.ndarray, counts: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The difference of the two groups' means and its percentile interval at `level`, resampling texts: `sums`
    (texts, 2, ...) each text's sum of values per group (function, content), `counts` (texts, 2) its values per
    group. Returns the difference (...) and the interval's low and high ends (...), NaN under MIN_TEXTS texts."""
    texts = sums.shape[0]
    flat = sums.reshape(texts, -1).astype(np.float64)
    width = flat.shape[1] // 2
    whole = flat.sum(axis=0).reshape(2, width) / counts.sum(axis=0)[:, None]
    shape = sums.shape[2:]
    if texts < MIN_TEXTS:
        empty = np.full(shape, np.nan)
        return (whole[0] - whole[1]).reshape(shape), empty, empty.copy()
    values = np.concatenate([flat, counts.astype(np.float64)], axis=1)
    rng, step = np.random.default_rng(seed), max(1, DRAW_VALUES // texts)
    totals = np.concatenate([  # (resamples, 2·K + 2)
        rng.multinomial(texts, np.full(texts, 1 / texts), size=min(step, resamples - start)).astype(np.float64) @ values
        for start in range(0, resamples, step)
    ])
    with np.errstate(invalid="ignore", divide="ignore"):
        means = totals[:, : 2 * width].reshape(resamples, 2, width) / totals[:, 2 * width :, None]
    differences = means[:, 0] - means[:, 1]
    tail = (1 - level) / 2
    low, high = np.nanquantile(differences, [tail, 1 - tail], axis=0)
    return (whole[0] - whole[1]).reshape(shape), low.reshape(shape), high.reshape(shape)


def separating_heads(heads: Path, tokens: Path, temporary: Path) -> pd.DataFrame | None:
    """Per layer, every head with its function − content difference of mean share, its bootstrap interval and both
    groups' means and n, largest |difference| first within each layer; None without attribution rows or without
    both groups (no parts of speech)."""
    parts, listed = parquet_list(heads), parquet_list(tokens)
    if parts is None or listed is None:
        return None
    function = ", ".join(f"'{v}'" for v in FUNCTION)
    content = ", ".join(f"'{v}'" for v in CONTENT)
    query = f"""
        WITH words AS (
            SELECT text_index, token_index, CASE WHEN upos IN ({function}) THEN 0 ELSE 1 END AS word_group
            FROM ({token_groups(listed)}) WHERE NOT special AND upos IN ({function}, {content})
        )
        SELECT h.text_index, w.word_group, h.layer, CAST(h.component AS VARCHAR) AS component,
            sum(CAST(h.share AS DOUBLE)) AS total, count(*) AS n
        FROM read_parquet([{parts}]) h JOIN words w USING (text_index, token_index)
        WHERE h.attention_entropy IS NOT NULL
        GROUP BY ALL
    """
    with connect(temporary) as connection:
        found = connection.sql(query).df()
    if found.empty or found["word_group"].nunique() < 2:
        return None
    found["head"] = found["component"].str.removeprefix("head ").astype(np.int64)
    texts, text_at = np.unique(found["text_index"].to_numpy(), return_inverse=True)
    layers, layer_at = np.unique(found["layer"].to_numpy(), return_inverse=True)
    heads_, head_at = np.unique(found["head"].to_numpy(), return_inverse=True)
    group_at = found["word_group"].to_numpy()
    sums = np.zeros((len(texts), 2, len(layers), len(heads_)))
    sums[text_at, group_at, layer_at, head_at] = found["total"].to_numpy()
    counts = np.zeros((len(texts), 2))
    first = (layer_at == 0) & (head_at == 0)  # every token has every layer and head: count it once
    counts[text_at[first], group_at[first]] = found["n"].to_numpy()[first]
    difference, low, high = bootstrap_difference(sums, counts)
    n = counts.sum(axis=0)
    means = sums.sum(axis=0) / n[:, None, None]
    layer_grid, head_grid = np.meshgrid(layers, heads_, indexing="ij")
    table = pd.DataFrame(
        {
            "layer": layer_grid.reshape(-1),
            "head": head_grid.reshape(-1),
            "difference": difference.reshape(-1),
            "low": low.reshape(-1),
            "high": high.reshape(-1),
            "function_mean": means[0].reshape(-1),
            "content_mean": means[1].reshape(-1),
            "function_n": np.int64(n[0]),
            "content_n": np.int64(n[1]),
        }
    )
    table = table.assign(_size=-table["difference"].abs()).sort_values(["layer", "_size", "head"], kind="stable")
    return table.drop(columns="_size").reset_index(drop=True)[list(COLUMNS)]
