"""The `attention-encodings` command line: `analyze` a text, `plot` its charts, measure a `corpus`, `serve` the web
page, list `models`.

Every failure the user can cause ends in one `error: …` line on stderr and a non-zero exit status:
1 for a bad input or a model that cannot be loaded, 2 for a malformed command line or option value.
Building the commands imports only the light modules (`names`, `catalog`, `settings`); torch, transformers and
Altair load inside the command that needs them, so `--help` and usage errors answer at once.
"""

from __future__ import annotations

import functools
import inspect
import io
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..catalog import SIMILARITY, baselines, charted
from ..display import model_said, shown
from ..errors import AttentionEncodingsError, InputError, ModelLoadError, OptionError
from ..names import (
    BUNDLED_ALIAS,
    CORPUS_ENGINES,
    CORPUS_FORMATS,
    DEFAULT_BATCH_TOKENS,
    FIGURE_FILE_TYPES,
    SAMPLE_STATS,
    SMOLLM2_ALIAS,
)
from ..settings import MAX_RUNS, Settings, check_csv, default_of, options, runs

if TYPE_CHECKING:
    from ..analysis import Analysis
    from ..models import LoadedModel

FORMATS = ("table", "json", "csv")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

app = typer.Typer(
    name="attention-encodings",
    help="Trace every token through every layer of a transformer and measure how its representation moves.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def read_text(text: str) -> str:
    """The TEXT argument, or standard input when it is `-`, decoded strictly as UTF-8."""
    if text != "-":
        return text
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"standard input is not valid UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start})")


@contextmanager
def progress_bar(label: str, lines: bool = False) -> Iterator[object]:
    """A transient progress bar on stderr when it is a terminal; otherwise nothing, or with `lines` (for a long
    step) one line when the work starts and one when it ends, with its time."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield _progress_lines(label) if lines else None
        return
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _progress_lines(label: str) -> Callable[[int, int], None]:
    """A progress callback that says on stderr when work begins (its first report) and when it is done."""
    started = time.perf_counter()
    said: list[str] = []

    def report(done: int, total: int) -> None:
        if not said:
            said.append("started")
            typer.echo(f"{label}: started ({total:,} to do)", err=True)
        if done >= total and len(said) == 1:
            said.append("done")
            typer.echo(f"{label}: done in {time.perf_counter() - started:,.1f} s", err=True)

    return report


PLAIN_WIDTH = 100
"""The width the `--token` table fits in a pipe or a file; on a terminal it fits the terminal's (its lists of
nearest items are cut to fit, with …)."""


def table_width(out: Path | None) -> int:
    """The columns a table may fill: the terminal's (as rich measures it, `COLUMNS` included) when standard
    output is one and nothing goes to a file, else `PLAIN_WIDTH`."""
    terminal = Console(file=sys.stdout)
    return terminal.width if out is None and terminal.is_terminal else PLAIN_WIDTH


def overview_tables(result: Analysis) -> list[Table]:
    """One table per charted measure: a row per token, a column per layer (or per step l→l+1), then a row per
    measure of the whole text drawn as its baseline (the anisotropy under cosine); the vocabulary baselines are in
    JSON and CSV. Every table has the same width and the same column widths, so they read as one aligned block."""
    shown = {m.name: m for m in result.charted}
    cells = {
        name: [[_cell(m.info.format, v) for v in m.values[:, column]] for column in range(len(result.tokens))]
        for name, m in shown.items()
    }
    extra = {
        name: [(b.name, [_cell(b.format, v) for v in result.text_measures[b.name]]) for b in baselines(name) if b.name in result.text_measures]
        for name in shown
    }
    titles = {name: m.info.titled(result.settings) for name, m in shown.items()}
    every = [c for name in shown for row in cells[name] + [row for _, row in extra[name]] for c in row]
    width = max([len(f"{layer}→{layer + 1}") for layer in result.layers] + [len(c) for c in every])
    labels = max([len(t.shown) for t in result.tokens] + [len(label) for rows in extra.values() for label, _ in rows])
    tables = []
    for name, measure in shown.items():
        table = Table(title=titles[name], title_justify="left", title_style="bold", min_width=max(map(len, titles.values())))
        table.add_column("#", justify="right")
        table.add_column("token", min_width=labels)
        for layer in measure.layers:
            header = f"{layer}→{layer + 1}" if measure.info.steps else f"L{layer}"
            table.add_column(header, justify="right", min_width=width)
        for column, token in enumerate(result.tokens):
            table.add_row(str(token.index), token.shown, *cells[name][column])
        for label, row in extra[name]:
            table.add_section()
            table.add_row("", label, *row, style="italic")
        tables.append(table)
    return tables


def _cell(number_format: str, value: Any) -> str:
    """A number as its measure prints it; a missing value (NaN, or -1 for counts) as an empty cell."""
    value = value.item()
    missing = value != value if isinstance(value, float) else value < 0
    return "" if missing else format(value, number_format)


def token_table(result: Analysis, width: int = PLAIN_WIDTH) -> Table:
    """Layer-by-layer table for an analysis narrowed to one token: every charted measure (zscore as `z`), then its
    nearest items (the only column that gives way, cut with … where the table would pass `width` columns)."""
    token = result.tokens[0]
    columns = {"layer": [str(layer) for layer in result.layers]}
    for m in result.charted:
        header = f"{m.name}→next" if m.info.steps else m.info.header
        columns[header] = [_cell(m.info.format, m.values[layer, 0]) if layer < len(m.layers) else "" for layer in result.layers]
    widths = [max(len(header), *map(len, cells)) for header, cells in columns.items()]
    table = Table(title=f"token {token.index} {token.shown}", title_justify="left", title_style="bold")
    items = ["nearest items", "head predicts"] if result.has_head else ["nearest vocabulary items"]
    for (header, cells), least in zip(columns.items(), widths):
        table.add_column(header, justify="right", no_wrap=True, min_width=least)
    room = max(12, width - sum(column + 3 for column in widths) - 4)  # each column: padding and a border
    for header in items:
        share = max(12, (room - 3 * (len(items) - 1)) // len(items))
        table.add_column(header, justify="left", no_wrap=True, overflow="ellipsis", max_width=share)
    for layer in result.layers:
        texts = ["  ".join(f"{shown(n.text)} {n.cosine:.2f}" for n in result.neighbours(layer, 0)[:5])]
        if result.has_head:
            texts.append("  ".join(f"{shown(p.text)} {p.probability:.2f}" for p in result.predictions(layer, 0)[:3]))
        table.add_row(*(cells[layer] for cells in columns.values()), *texts)
    return table


def similarity_table(result: Analysis) -> Table:
    """For an analysis narrowed to one token: its cosine to every token of the text, a row per token and a
    column per layer."""
    similarity = result.similarity
    assert similarity is not None
    token = similarity.rows[0]
    table = Table(title=f"token {token.index} {token.shown}: cosine to every token", title_justify="left", title_style="bold")
    table.add_column("#", justify="right")
    table.add_column("token")
    for layer in result.layers:
        table.add_column(f"L{layer}", justify="right")
    for other in similarity.columns:
        table.add_row(str(other.index), other.shown, *(_cell(SIMILARITY.format, v) for v in similarity.values[:, 0, other.index]))
    return table


def write_output(text: str, out: Path | None) -> None:
    """`text` to standard output, or to `out` (then saying `wrote FILE` on stderr)."""
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as error:
        raise InputError(f"cannot write {out}: {error.strerror or error}") from error
    typer.echo(f"wrote {out}", err=True)


def render_tables(tables: list[Table], out: Path | None) -> None:
    """Print tables on a terminal with their styles; elsewhere (a pipe, `--out`) as plain text whose lines carry
    no trailing spaces, each table as wide as it needs (nothing wraps)."""
    terminal = Console(file=sys.stdout)
    if out is None and terminal.is_terminal:
        for table in tables:
            terminal.print(table)
        return
    write_output("".join(_plain(table) for table in tables), out)


def _plain(table: Table) -> str:
    """`table` as plain text, each line stripped of the padding after it."""
    console = Console(file=io.StringIO(), width=Console(width=10_000).measure(table).maximum, color_system=None, soft_wrap=False)
    console.print(table)
    return "".join(line.rstrip() + "\n" for line in console.file.getvalue().splitlines())


TextArgument = Annotated[str, typer.Argument(help="The text to analyse, or - to read it from standard input.")]
TokenOption = Annotated[Optional[str], typer.Option(help="Focus on one token: its index, or its text (first match).")]
_TYPES: dict[str, Any] = {"str": str, "str | None": Optional[str], "int": int, "int | None": Optional[int], "bool": bool}
"""Python types of the settings fields, by their (string) annotation."""


def with_settings(
    *,
    only: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
    repeatable: tuple[str, ...] = (),
    **defaults: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per `Settings` field (name, help, choices and default from the field; `only`
    limits which, `skip` leaves some out, `defaults` changes a default), collected into its `settings` argument.
    A new setting is then one field in `settings.py`, and every command offers it. With `repeatable`, those
    options may be given several times and the command gets `runs` instead: one `Settings` per combination of
    the repeated values (`settings.runs`: their product, at most `MAX_RUNS`)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        chosen = [(item, option) for item, option in options() if (only is None or item.name in only) and item.name not in skip]
        argument = "runs" if repeatable else "settings"
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != argument]
        added = []
        for item, option in chosen:
            listed = f": {', '.join(option.choices)}" if option.choices else ""
            help_text = option.help.removesuffix(".") + listed + "."
            kind, default, details = _TYPES[item.type], defaults.get(item.name, default_of(item)), {}
            if item.name in repeatable:
                help_text += f" Repeat it to compare runs (at most {MAX_RUNS} in all)."
                kind, default, details = Optional[list[str]], None, {"metavar": "<str>"}  # repeatable settings are strings
            flag = typer.Option(f"--{item.name.replace('_', '-')}", *option.flags, help=help_text, **details)
            annotation = Annotated[kind, flag]
            added.append(inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))

        @functools.wraps(command)
        def run(**given: Any) -> Any:
            values = {item.name: given.pop(item.name) for item, _ in chosen}
            if not repeatable:
                return command(**given, settings=Settings(**values))
            repeated = {
                item.name: values.pop(item.name) or [defaults.get(item.name, default_of(item))]
                for item, _ in chosen
                if item.name in repeatable
            }
            return command(**given, runs=runs(repeated, **values))

        parameters = [*own, *added]
        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate


def model_line(handle: LoadedModel, threads: int) -> str:
    """The model in use, why, where it runs and what to know about it, as printed on stderr."""
    from ..analysis import model_notes

    placement = f"{handle.device}, {str(handle.model.dtype).removeprefix('torch.')}, {threads} thread{'s' if threads > 1 else ''}"
    notes = "".join(f"; {note}" for note in model_notes(handle))
    return f"model: {model_said(handle.label, handle.reason, placement)}{notes}"


def run_analysis(source: str, settings: Settings, said: set[str] | None = None, focus: str | None = None) -> Analysis:
    """Load the model (saying which, why and where on stderr, and what to know about it, unless that line is
    already in `said`: overlaid runs of one model say it once) and analyse `source`, with a progress bar; `focus`
    is the token a long text's attribution detail is for."""
    from ..analysis import analyze_with, load_for
    from ..models import set_threads

    used = set_threads(settings.threads)
    handle = load_for(settings)
    line = model_line(handle, used)
    if said is None or line not in said:
        typer.echo(line, err=True)
    if said is not None:
        said.add(line)
    stats = None
    if settings.normalize != "none" and settings.stats == SAMPLE_STATS:
        from ..stats import sample_stats

        with progress_bar("sample statistics (once per model and tap)", lines=True) as progress:
            stats = sample_stats(handle, settings.tap, progress=progress)
    with progress_bar("measuring") as progress:
        result = analyze_with(settings, source, handle, progress=progress, stats=stats, focus=focus)
    if result.dropped:
        typer.echo(f"note: truncated to {len(result.tokens)} tokens, dropping the last {result.dropped}", err=True)
    if result.attribution is not None and result.attribution.note:
        typer.echo(f"note: {result.attribution.note}", err=True)
    return result


def pick_token(result: Analysis, token: str) -> int:
    """The index of the token `--token` names; a note on stderr lists the other matches."""
    matches = result.token_matches(token)
    if len(matches) > 1:
        others = ", ".join(str(i) for i in matches[1:])
        typer.echo(f"note: {token!r} matches tokens {matches}; showing {matches[0]} (use --token {others} for others)", err=True)
    return result.token_index(token)


@app.command("analyze")
@with_settings()
def analyze_command(
    text: TextArgument,
    token: TokenOption = None,
    output_format: Annotated[str, typer.Option("--format", "-f", help=f"Output: {', '.join(FORMATS)}.")] = "table",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write to this file instead of standard output.")] = None,
    *,
    settings: Settings,
) -> None:
    """Measure cosine, rank and neighbour churn for every token at every layer."""
    if output_format not in FORMATS:
        raise OptionError(f"unknown format {output_format!r}; choose one of: {', '.join(FORMATS)}")
    if output_format == "csv":
        check_csv(settings)
    if output_format == "table" and settings.similarity and token is None:
        raise OptionError("a table shows the similarity of one token (--token) to every other; --format json writes all of it")
    result = run_analysis(read_text(text), settings, focus=token)
    if token is not None:
        result = result.select(pick_token(result, token))
    if output_format == "json":
        write_output(result.to_json() + "\n", out)
    elif output_format == "csv":
        frame = result.to_frame() if result.attribution is None else result.attribution.to_frame()
        write_output(frame.to_csv(index=False), out)
    else:
        tables = [token_table(result, table_width(out))] if token is not None else overview_tables(result)
        render_tables(tables + ([similarity_table(result)] if settings.similarity else []), out)


def parse_pair(value: str) -> tuple[str, str]:
    """`--pair P,Q` as its two tokens (indices or texts), or a one-line `OptionError`."""
    first, comma, second = value.partition(",")
    if not (comma and first.strip() and second.strip()):
        raise OptionError(f"--pair takes two tokens as P,Q (indices or texts), such as 2,8 or flies,flies; got {value!r}")
    return first, second


@app.command("plot")
@with_settings(repeatable=("model", "tap", "reference"), skip=("similarity", "attribution"))
def plot_command(
    text: TextArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help=f"The figure file: {', '.join(FIGURE_FILE_TYPES)}.")],
    token: Annotated[
        Optional[str], typer.Option(help="The token to highlight: its index, or its text. Default: the first non-special.")
    ] = None,
    measure: Annotated[
        Optional[str],
        typer.Option(
            help=f"What to draw: a measure ({', '.join(charted())}) or all (the default: every chart and the neighbour table)."
        ),
    ] = None,
    pair: Annotated[
        Optional[str],
        typer.Option(help="P,Q: draw the similarity of two tokens (indices or texts) against the layer, and every token pair's."),
    ] = None,
    attribution: Annotated[
        bool,
        typer.Option(
            "--attribution",
            help="Draw which heads moved --token instead: its cosine's change per layer by part, and every layer × "
            "part's share.",
        ),
    ] = False,
    layer: Annotated[
        Optional[int], typer.Option(help="With --attribution and --head: the layer (1..N) of the head whose sources to draw.")
    ] = None,
    head: Annotated[
        Optional[int], typer.Option(help="With --attribution and --layer: the head (0..H-1) whose sources to draw.")
    ] = None,
    *,
    runs: tuple[Settings, ...],
) -> None:
    """Draw a text's charts to a PNG, SVG, PDF or self-contained HTML file; repeat --model, --tap or --reference to
    overlay the runs."""
    from ..comparison import compare
    from ..views import check_figure, check_file_type, figure, overlay_figure, pair_figure, save

    check_file_type(out)
    if measure is not None:
        check_figure(measure)
    tokens = None if pair is None else parse_pair(pair)
    if tokens is not None and (measure is not None or token is not None):
        raise OptionError("--pair draws its own figure, of its two tokens; leave out --measure and --token")
    if attribution and (tokens is not None or measure is not None):
        raise OptionError("--attribution draws its own figure, of one token; leave out --pair and --measure")
    if not attribution and (layer is not None or head is not None):
        raise OptionError("--layer and --head choose a head for --attribution; add --attribution")
    source = read_text(text)
    if attribution:
        write_attribution(source, runs, token, layer, head, out)
        return
    said: set[str] = set()
    results = [run_analysis(source, s if tokens is None else s.replace(similarity=True), said) for s in runs]
    selected = None if token is None else pick_token(results[0], token)
    if tokens is None and len(results) == 1:
        chart = figure(results[0], measure or "all", selected)
    else:
        comparison = compare(results)
        note = comparison.note()
        if note:
            typer.echo(f"note: {note}", err=True)
        chart = pair_figure(comparison, *tokens) if tokens else overlay_figure(comparison, measure or "all", selected)
    save(chart, out)
    typer.echo(f"wrote {out}", err=True)


def write_attribution(
    source: str, runs: tuple[Settings, ...], token: str | None, layer: int | None, head: int | None, out: Path
) -> None:
    """`plot --attribution`: the panel of which heads moved `token` (default: the first non-special), the runs side
    by side; a token, layer or head the text or model does not have is a usage error (exit 2)."""
    from ..comparison import compare
    from ..errors import TokenError
    from ..views import attribution_figure, default_token, save

    said: set[str] = set()
    try:
        results = [run_analysis(source, s.replace(attribution=True), said, focus=token) for s in runs]
        selected = default_token(results[0]) if token is None else pick_token(results[0], token)
    except TokenError as error:
        raise OptionError(str(error)) from error
    comparison = compare(results)
    note = comparison.note() if len(results) > 1 else None
    if note:
        typer.echo(f"note: {note}", err=True)
    save(attribution_figure(comparison, selected, layer, head), out)
    typer.echo(f"wrote {out}", err=True)


@contextmanager
def corpus_progress(quiet: bool) -> Iterator[object]:
    """A progress bar on stderr for a corpus run (texts, tokens/s, time left) when it is a terminal and not `quiet`."""
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        yield None
        return
    columns = (
        TextColumn("measuring"), BarColumn(), MofNCompleteColumn(), TextColumn("texts"),
        TextColumn("{task.fields[speed]}"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("measuring", total=None, speed="")
        first: list[tuple[float, int]] = []

        def update(texts: int, total: int, tokens: int) -> None:
            first.append(first[0] if first else (time.perf_counter(), tokens))
            elapsed, since = time.perf_counter() - first[0][0], tokens - first[0][1]
            speed = f"{since / elapsed:,.0f} tokens/s" if since and elapsed > 0 else ""
            bar.update(task, completed=texts, total=total, speed=speed)

        yield update


InputArgument = Annotated[
    str,
    typer.Argument(
        metavar="INPUT",
        help="A .txt (one text per line), .jsonl, .parquet or .conllu file; - for lines on standard input; "
        "or 'sample', the bundled UD English-EWT dev sentences.",
    ),
]
TextFieldOption = Annotated[str, typer.Option(help="The JSON field or Parquet column holding the text.")]
InputFormatOption = Annotated[
    str, typer.Option("--format", "-f", help=f"The input's format: {', '.join(CORPUS_FORMATS)} (auto: from its extension).")
]
LimitOption = Annotated[Optional[int], typer.Option(min=1, help="Only the first N records.")]
BatchTokensOption = Annotated[int, typer.Option(min=1, help="Padded tokens per batch (bounds memory).")]
EngineOption = Annotated[str, typer.Option(help=f"Where the batches run: {', '.join(CORPUS_ENGINES)}.")]
RayAddressOption = Annotated[
    Optional[str],
    typer.Option(help="The Ray cluster for --engine ray (head-node:6379, auto, ray://host:10001). Default: a local Ray for the run."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or messages on stderr (errors still print).")]
"""Corpus mode's input options, shared by `corpus` and `fit-lens`."""


def reach_ray(engine: str, address: str | None) -> None:
    """For `--engine ray`, check the cluster answers before torch loads: an address where nothing listens is an
    error in seconds."""
    if engine == "ray":
        from ..clusters import check_ray_address

        check_ray_address(address)


@app.command("corpus")
@with_settings(neighbours=0, skip=("similarity", "attribution"))
def corpus_command(
    source: InputArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="The output folder (created; rerun the same command to resume).")],
    text_field: TextFieldOption = "text",
    input_format: InputFormatOption = "auto",
    limit: LimitOption = None,
    batch_tokens: BatchTokensOption = DEFAULT_BATCH_TOKENS,
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run with other settings in --out.")] = False,
    quiet: QuietOption = False,
    attribution: Annotated[
        bool,
        typer.Option(
            "--attribution",
            help="Also split every layer into its parts (the residual, each head, the attention bias, the MLP, the "
            "norms' biases; see the README's 'Which heads moved it'): heads/ (each "
            "part's share of the cosine, each head's attention entropy), share rows in the summary, and heads.csv "
            "(the heads that separate function from content words).",
        ),
    ] = False,
    ablation: Annotated[
        bool,
        typer.Option(
            "--ablation",
            help="With --attribution, also each head's ablation rank in heads/ (about H times the scan's work).",
        ),
    ] = False,
    *,
    settings: Settings,
) -> None:
    """Measure every text of a corpus, in batches, into a folder: Parquet rows, a summary by word class, a report."""
    reach_ray(engine, ray_address)
    from ..corpus import run_corpus
    from ..models import set_threads

    say = (lambda line: None) if quiet else (lambda line: typer.echo(line, err=True))
    used = set_threads(settings.threads)
    with corpus_progress(quiet) as progress:
        result = run_corpus(
            settings.replace(attribution=attribution), source, out, ablation=ablation, limit=limit, engine=engine,
            text_field=text_field, format=input_format,
            batch_tokens=batch_tokens, ray_address=ray_address, overwrite=overwrite, progress=progress,
            on_model=lambda handle: say(model_line(handle, used)), on_note=lambda note: say(f"note: {note}"),
        )
    manifest = result.manifest
    counts, speed = manifest["counts"], manifest["timing"]["tokens_per_s"]
    rate = f", {speed:,.0f} tokens/s" if speed else ""
    say(
        f"wrote {out}: {counts['texts']:,} texts ({counts['ok']:,} ok, {counts['truncated']:,} truncated, "
        f"{counts['skipped']:,} skipped), {counts['tokens']:,} tokens{rate}; see {out / 'report.html'}"
    )


@app.command("serve")
@with_settings(only=("device", "dtype", "threads"))
def serve_command(
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes the page to the network.")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")] = DEFAULT_PORT,
    models: Annotated[
        Optional[list[str]],
        typer.Option(
            "--models",
            help="The models this server may load (hub ids, directories or 'bundled'), comma-separated or repeated. "
            "Default: the default model resolution.",
        ),
    ] = None,
    stats: Annotated[
        Optional[list[str]],
        typer.Option(
            "--stats",
            help="Statistics files (stats.npz) a request may normalize with, comma-separated or repeated; read now, "
            "and named in requests by the string given here. 'sample': the bundled sample corpus's, per model and "
            "tap (computed once, then cached). Default: none.",
        ),
    ] = None,
    lens: Annotated[
        Optional[list[str]],
        typer.Option(
            "--lens",
            help="Learned lenses (folders fit-lens wrote) a request may add, comma-separated or repeated; read now, and "
            "named in requests by their folder's name. Default: none.",
        ),
    ] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in a web browser.")] = False,
    *,
    settings: Settings,
) -> None:
    """Serve the interactive page and its JSON API (docs at /docs)."""
    from .server import serve  # FastAPI and uvicorn load only for this command, not for every CLI start

    allowed = _listed(models)
    serve(
        allowed or [None], host=host, port=port, open_browser=open_browser, settings=settings, stats=_listed(stats),
        lenses=_listed(lens),
    )


def _listed(entries: list[str] | None) -> list[str]:
    """The names of a repeatable, comma-separated option."""
    return [name.strip() for entry in entries or [] for name in entry.split(",") if name.strip()]


@app.command("models")
def models_command() -> None:
    """List the supported families, the bundled models and the models in the local HF cache."""
    from ..models import ADAPTERS, bundled_model_dir, cached_models, usable_cpus
    from ..models.bundled import BUNDLED_DISTRIBUTION, BUNDLED_SHA256, BUNDLED_WEIGHTS, sha256_of
    from ..models.smollm2 import SMOLLM2_DISTRIBUTION, SMOLLM2_SHA256, smollm2_cache, smollm2_gguf

    families = Table(title="supported architecture families", title_justify="left", title_style="bold")
    for header in ("family", "model_type", "examples"):
        families.add_column(header)
    for adapter in ADAPTERS:
        families.add_row(adapter.family, ", ".join(adapter.model_types), ", ".join(adapter.examples))
    render_tables([families], None)
    folder = bundled_model_dir()
    weights = folder / BUNDLED_WEIGHTS
    check = "missing" if not weights.is_file() else ("ok" if sha256_of(weights) == BUNDLED_SHA256 else "MISMATCH")
    typer.echo(f"\nbundled offline model: all-MiniLM-L6-v2 from {BUNDLED_DISTRIBUTION} (use --model {BUNDLED_ALIAS})")
    typer.echo(f"  path: {folder}\n  sha256 check: {check}")
    typer.echo(f"\noffline decoder: SmolLM2-135M-Instruct (4-bit GGUF) from {SMOLLM2_DISTRIBUTION} (use --model {SMOLLM2_ALIAS})")
    try:
        gguf = smollm2_gguf()
        check = "ok" if sha256_of(gguf) == SMOLLM2_SHA256 else "MISMATCH"
        typer.echo(f"  path: {gguf}\n  sha256 check: {check}")
    except ModelLoadError as error:
        typer.echo(f"  {error}")
    cache = smollm2_cache()
    state = "present" if cache.is_dir() else "not made yet (the first use dequantises the GGUF, about 25 s)"
    typer.echo(f"  dequantised cache: {cache} ({state})\n")
    cached = Table(title="models in the local Hugging Face cache", title_justify="left", title_style="bold")
    for header in ("repo id", "model_type", "supported family", "size"):
        cached.add_column(header)
    for entry in cached_models():
        cached.add_row(entry.repo_id, entry.model_type or "?", entry.family or "no", f"{entry.size_bytes / 1e6:.0f} MB")
    if cached.row_count:
        render_tables([cached], None)
    else:
        typer.echo("no models in the local Hugging Face cache")
    typer.echo(f"\ndevices: cpu ({usable_cpus()} usable cores); cuda: {cuda_summary()}")


def cuda_summary() -> str:
    """The CUDA GPUs torch can use, or why there are none."""
    import torch

    if not torch.cuda.is_available():
        return "not available (--device auto uses the CPU)"
    return ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count()))


def _flags_show_no_value(command: Any) -> None:
    """Leave the value column of `--help` empty for flags (`--similarity`, `--help`), which typer would print as
    `<bool>`, as if they took a value; for `command` and each of its subcommands."""
    import click

    for each in [command, *getattr(command, "commands", {}).values()]:
        options = [*each.params, each.get_help_option(click.Context(each))]
        for option in options:
            if getattr(option, "is_flag", False):
                option.metavar = ""


from .lens import register as register_lens  # noqa: E402  (fit-lens: its own module, which reads the options above)

register_lens(app)

from .attribute import attribute_command  # noqa: E402  (it builds on the helpers above)

app.command("attribute")(with_settings(skip=("attribution", "similarity"))(attribute_command))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning every expected failure into one line on stderr and an exit status."""
    command = typer.main.get_command(app)
    _flags_show_no_value(command)
    try:
        code = command.main(args=argv, prog_name="attention-encodings", standalone_mode=False)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        code = 130
    except typer.Exit as exit_:
        code = exit_.exit_code
    except typer.TyperException as error:  # a malformed command line: unknown option, non-numeric --top-k, …
        message = error.format_message()
        if message:  # (empty when the usage was just printed for a bare command)
            typer.echo(f"error: {message}", err=True)
        code = getattr(error, "exit_code", 2)
    except AttentionEncodingsError as error:
        typer.echo(f"error: {error}", err=True)
        code = 2 if isinstance(error, OptionError) else 1
    except BrokenPipeError:
        sys.stderr.close()
        code = 0
    sys.exit(code if isinstance(code, int) else 0)
