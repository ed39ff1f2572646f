"""`report.html`: the corpus summary as one self-contained page (Vega inlined, no CDN), opened by a double click."""

from __future__ import annotations

import html
import json
from typing import Any

import pandas as pd

from ..catalog import MEASURES
from ..display import model_said
from ..settings import Settings
from ..views.corpus import MIN_TOKENS, corpus_charts
from ..views.corpus_heads import heads_charts
from ..views.export import vega_javascript
from .summary import group_order
from .words import UPOS

STYLE = """
body { font-family: Inter, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 28px 36px; color: #212529; }
h1 { font-size: 22px; margin: 0 0 6px; } h2 { font-size: 17px; margin: 30px 0 8px; }
.model { color: #495057; margin: 0 0 16px; } .note { background: #fff4e6; padding: 8px 12px; border-radius: 4px; }
table { border-collapse: collapse; margin: 0 28px 12px 0; font-size: 13px; display: inline-table; vertical-align: top; }
th { text-align: left; font-weight: 600; padding: 3px 14px 3px 0; color: #495057; } td { padding: 3px 14px 3px 0; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 18px 36px; } figure { margin: 0; }
.explain { color: #495057; font-size: 13px; max-width: 980px; }
#separating td.sure { font-weight: 600; }
"""
TABLE_HEADS = 3
"""Heads listed per layer in the report's table (heads.csv has them all)."""


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs)


def _script(data: Any) -> str:
    """JSON safe to place inside a <script> element."""
    return json.dumps(data, ensure_ascii=False).replace("</", "<\\/")


def embed_script(specs: dict[str, Any]) -> str:
    """The script that draws each spec into the element of its name, or says there why it could not."""
    return f"""<script>
const specs = {_script(specs)};
for (const [name, spec] of Object.entries(specs)) {{
  vegaEmbed("#" + name, spec, {{actions: false, renderer: "svg"}}).catch((error) => {{
    document.getElementById(name).textContent = "could not draw this chart: " + error;
  }});
}}
</script>"""


def _heads_section(figures: str, separating: pd.DataFrame | None) -> str:
    """The attribution's section: the heatmaps, then the table of the heads that separate function words from
    content words most in each layer; nothing without attribution."""
    if not figures:
        return ""
    table = ""
    if separating is not None and len(separating):
        top = separating.groupby("layer", sort=True).head(TABLE_HEADS)
        rows = "".join(
            f"<tr><td class=\"n\">{r.layer}</td><td class=\"n\">{r.head}</td>"
            f"<td class=\"n{' sure' if r.low > 0 or r.high < 0 else ''}\">{r.difference:+.4f}</td>"
            f"<td class=\"n\">{r.low:+.4f} to {r.high:+.4f}</td>"
            f"<td class=\"n\">{r.function_mean:+.4f}</td><td class=\"n\">{r.content_mean:+.4f}</td></tr>"
            for r in top.itertuples()
        )
        first = separating.iloc[0]
        table = (
            "<h3>Heads that separate function words from content words</h3>"
            f'<p class="explain">Per layer, the {TABLE_HEADS} heads whose mean share differs most between function '
            f"words (n = {int(first.function_n):,} tokens) and content words (n = {int(first.content_n):,}): "
            "function minus content, with a bootstrap 95 % interval over texts (texts resampled, not tokens); bold "
            "where the interval excludes 0. heads.csv lists every head.</p>"
            '<table id="separating"><tr><th>layer</th><th>head</th><th>difference</th><th>95 % interval</th>'
            f"<th>function mean</th><th>content mean</th></tr>{rows}</table>"
        )
    return (
        '<h2 id="heads">Which heads moved it</h2><p class="explain">Each layer split exactly into the residual, each '
        "attention head, the attention bias, the MLP and the norms' biases: each cell is a part's mean share of the "
        "cosine to the original encoding over a group's tokens (the parts of a layer sum to its cosine). Blue pulls "
        "toward the original encoding, red away from it; the colour scale is logarithmic away from 0, so that heads "
        f'(near 0.01) and the residual (near 1) both show.</p><div class="charts">{figures}</div>{table}'
    )


def report_html(
    manifest: dict[str, Any], summary: pd.DataFrame, settings: Settings, separating: pd.DataFrame | None = None
) -> str:
    """The page: the model line, the counts, the settings and the speed, then every charted measure against the
    layer per group (median line, interquartile band)."""
    charted = {info.column for info in MEASURES.values() if info.charted}
    columns = [column for column in manifest["measures"] if column in charted]  # baselines live in the summary
    present = summary["group"].unique().tolist()
    classes = [g for g in group_order(present) if g in UPOS or g not in ("all", "function", "content", "special")]
    model, counts, timing = manifest["model"], manifest["counts"], manifest["timing"]
    measured = counts["tokens"] > 0
    charts = corpus_charts(summary, columns, settings, classes) | heads_charts(summary) if measured else {}
    specs = {name: chart.to_dict() for name, chart in charts.items()}
    placement = f"{model['device']}, {model['dtype']}"
    model_line = f"model: {model_said(model['label'], model['reason'], placement)}"
    speed = f"{timing['tokens_per_s']:,.0f} tokens/s" if timing.get("tokens_per_s") else "—"
    facts = [
        ("input", f"{manifest['input']['path']} ({manifest['input']['format']})"),
        ("texts", f"{counts['texts']:,}: {counts['ok']:,} ok, {counts['truncated']:,} truncated, {counts['skipped']:,} skipped"),
        ("tokens measured", f"{counts['tokens']:,} ({counts['rows']:,} rows over {len(manifest['layers'])} layers)"),
        ("speed", f"{speed} ({manifest['run']['engine']} engine, {timing['seconds']:,.1f} s measuring)"),
        ("word classes", manifest["word_classes"] or "none"),
        ("attention-encodings", manifest["version"]),
    ]
    chosen, run = manifest["settings"], manifest["run"]
    settings_rows = [
        ("tap", chosen["tap"]),
        ("reference", chosen["reference"]),
        ("neighbourhood (top-k)", f"{chosen['top_k']:,}"),
        ("neighbours kept", f"{chosen['neighbours']:,} per token and layer" if chosen["neighbours"] else "none"),
        ("long texts", "cut to the model's limit" if chosen["truncate"] else "skipped"),
        ("precision", chosen["dtype"]),
        ("batches", f"at most {run['batch_tokens']:,} padded tokens"),
        ("records", f"the first {run['limit']:,}" if run["limit"] else "all"),
    ]
    nothing = (
        ""
        if measured
        else '<p class="note">No text was measured: every record was skipped (texts.parquet says why), so there is '
        "nothing to chart.</p>"
    )
    note = nothing + (
        ""
        if manifest["word_classes"]
        else (
            '<p class="note">No parts of speech: the input is plain text and the <code>pos</code> extra (spaCy) is not '
            "installed, so only <b>all</b> and <b>special</b> are summarised. Use a CoNLL-U file, or "
            "<code>pip install 'attention-encodings[pos]'</code>.</p>"
        )
    )

    def figures(prefix: str) -> str:
        return "".join(f'<figure id="{n}"></figure>' for n in specs if n.startswith(prefix))

    by_class = (
        ""
        if not classes
        else (
            '<h2>By part of speech</h2><p class="explain">The same, for each universal part of speech of the words '
            "the tokens belong to (a token takes the part of speech of the word holding its first character). Each "
            f"panel's title gives n, its tokens; one with fewer than {MIN_TOKENS} is faded and marked <i>few</i>.</p>"
            f'<div class="charts">{figures("classes_")}</div>'
        )
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Corpus report: {html.escape(manifest["input"]["path"])}</title>
<style>{STYLE}</style><script>{vega_javascript()}</script></head>
<body>
<h1>Corpus report</h1>
<p class="model" id="model-line">{html.escape(model_line)}</p>
<table id="facts">{_rows(facts)}</table><table id="settings">{_rows(settings_rows)}</table>
{note}
<h2>All words, function words, content words and special tokens</h2>
<p class="explain">Each measure against the layer: the line is the median over the tokens of a group, the band
the middle half (25th to 75th percentile). <b>all</b> is every token but the special ones; <b>function</b> is
ADP AUX CCONJ DET PART PRON SCONJ; <b>content</b> is NOUN PROPN VERB ADJ ADV. The dashed line under cosine is the
corpus anisotropy: the mean cosine between tokens of different texts at that layer, the similarity of two
unrelated tokens.</p>
<div class="charts">{figures("broad_")}</div>
{by_class}
{_heads_section(figures("heads_"), separating)}
{embed_script(specs)}
</body></html>
"""
