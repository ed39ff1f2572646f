"""The `attribute` command: which parts (the residual, each attention head, the MLP, the norms' biases) moved one
token's cosine at each layer, with each head's rank when removed and the tokens it read from; one table that
fits 100 columns, or the JSON and CSV of `analyze --attribution`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import numpy as np
import typer
from rich.table import Table

from ..errors import InputError, OptionError
from ..settings import Settings
from .cli import FORMATS, PLAIN_WIDTH, TextArgument, pick_token, read_text, render_tables, run_analysis, write_output

if TYPE_CHECKING:
    from ..analysis import Analysis

CAPTION = (
    "moved: the part's share of the cosine; for residual, its share minus the previous layer's cosine (what\n"
    "changed before this block, and the renormalisation). rank w/o: the rank with that head removed in this\n"
    "block only (later blocks are not re-run), against the real rank."
)


def attribution_table(result: Analysis, layer: int | None, top: int) -> Table:
    """For an analysis narrowed to one token, per layer 1..N (or only `layer`): the cosine and its change, then
    the `top` parts that moved it most, each head with its rank when removed and its three main sources."""
    found = result.attribution
    assert found is not None
    token = found.tokens[0]
    delta = found.delta(token.index)
    layers = found.layers if layer is None else (layer,)
    table = Table(title=f"token {token.index} {token.text!r}: which parts moved its cosine", title_justify="left",
                  title_style="bold", caption=CAPTION, caption_justify="left")
    for header in ("layer", "cosine", "change", "rank", "part", "moved", "rank w/o"):
        table.add_column(header, justify="left" if header == "part" else "right", no_wrap=True)
    room = PLAIN_WIDTH - 70  # what the other columns, their padding and borders leave
    table.add_column("drew from (weight)", no_wrap=True, overflow="ellipsis", max_width=room)
    for shown in layers:
        terms = delta.loc[shown, list(found.components)].to_numpy()
        heads = {h.head: h for h in found.heads(shown, token.index)}
        for place, part in enumerate(np.argsort(-np.abs(terms), kind="stable")[:top]):
            name = found.components[part]
            head = heads.get(part - 1) if name.startswith("head ") else None
            first = place == 0
            table.add_row(
                str(shown) if first else "",
                f"{delta.loc[shown, 'cosine']:.3f}" if first else "",
                f"{delta.loc[shown, 'change']:+.3f}" if first else "",
                str(int(found.rank[shown, 0])) if first else "",
                name,
                f"{terms[part]:+.4f}",
                "" if head is None or head.ablation_rank is None else str(head.ablation_rank),
                "" if head is None else ", ".join(f"{s.text.strip() or s.text!r} {s.weight:.2f}" for s in head.sources),
                end_section=place == min(top, len(terms)) - 1,
            )
    return table


def attribute_command(
    text: TextArgument,
    token: Annotated[str, typer.Option(help="The token to explain: its index, or its text (first match).")],
    layer: Annotated[Optional[int], typer.Option(help="Only this layer (1..N). Default: every layer.")] = None,
    top: Annotated[int, typer.Option(min=1, help="Parts shown per layer, those that moved the cosine most.")] = 5,
    output_format: Annotated[str, typer.Option("--format", "-f", help=f"Output: {', '.join(FORMATS)}.")] = "table",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write to this file instead of standard output.")] = None,
    *,
    settings: Settings,
) -> None:
    """Which heads moved a token: its cosine at each layer split exactly into the residual, each attention head,
    the MLP and the norms' biases, with where each head looked."""
    if output_format not in FORMATS:
        raise OptionError(f"unknown format {output_format!r}; choose one of: {', '.join(FORMATS)}")
    source = read_text(text)
    result = run_analysis(source, settings.replace(attribution=True), focus=token)
    result = result.select(pick_token(result, token))
    found = result.attribution
    assert found is not None
    if layer is not None and layer not in found.layers:
        raise InputError(f"layer must be one of 1..{len(found.layers)} (the blocks); got {layer}")
    if output_format == "json":
        write_output(result.to_json() + "\n", out)
    elif output_format == "csv":
        frame = found.to_frame()
        write_output((frame if layer is None else frame[frame.layer == layer]).to_csv(index=False), out)
    else:
        render_tables([attribution_table(result, layer, top)], out)
