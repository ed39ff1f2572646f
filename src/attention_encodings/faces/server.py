"""The web face: `attention-encodings serve`, an interactive page and a JSON API over one shared model.

Safety: a request names a model only by an id from the list the server was started with, and statistics for
normalising only by an id from those it was started with (loaded at start-up), so it can never make the server
download a model or open a path; text length and token count are capped; model work runs
in the thread pool, off the event loop; each model is loaded once and shared (its lock serialises the
hooked forward passes). Every failure a request can cause is a 4xx with one line in `{"detail": ...}`; a body over
`guard.MAX_BODY_BYTES` gets 413 before it is parsed, and every response carries the security headers of `guard`.
The page and the API docs (/docs, /redoc) load nothing from a CDN.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import webbrowser
from collections.abc import Sequence
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Optional

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, create_model

from .._version import __version__
from ..analysis import Analysis, analyze_with, head_lens_for, model_notes
from ..catalog import HEAD_MEASURES, MEASURES, TEXT_MEASURES
from ..comparison import compare
from ..display import model_said
from ..errors import InputError
from ..metrics import Stats
from ..models import LoadedModel, load_model, set_threads
from ..models.bundled import BUNDLED_LABEL
from ..names import BUNDLED_ALIAS, NORMALIZATIONS, REFERENCES, SAMPLE_STATS
from ..settings import MAX_RUNS, Settings, check_csv, default_of, options
from ..stats import read_stats, sample_stats
from ..trace import TAPS, check_text
from ..tuned_lens import check_offered, offered_lenses_of
from ..views import TABLES, default_token, page_specs, vega_javascript
from .guard import MAX_BODY_BYTES, Guard

DEFAULT_MODEL_ID = "default"
"""The id under which a server started without `--models` offers the default model resolution."""
MAX_CHARS = 2000
MAX_TOKENS = 128
"""Per request, special tokens included (or the model's own limit, if lower)."""
MAX_NEIGHBOURS = 50
CACHE_SIZE = 32
"""Analyses kept per server, so the page's chart, CSV and JSON requests for one text compute it once."""
STATIC = Path(__file__).with_name("static")


LIMITS: dict[str, int] = {"neighbours": MAX_NEIGHBOURS}
"""Upper bounds a request must keep to, beyond the settings' own."""
WEB_HELP: dict[str, str] = {
    "stats": "The statistics to normalize with: an id from GET /api/models `stats` (the statistics this server was "
    "started with); default: the first. Only with normalize center or standardize.",
    "lens": "A learned lens whose measures to add: a name from GET /api/models `lenses` (the lenses this server was "
    "started with, by folder name); default: none.",
}
"""Request field descriptions that differ from the command line's help."""


def _request_field(name: str) -> tuple[Any, Any]:
    """A request field for one web-settable `Settings` field: its type (a Literal of its choices), default,
    bounds and help, all from the field."""
    item, option = next((item, option) for item, option in options() if item.name == name)
    kind: Any = {"int": int, "bool": bool}.get(str(item.type), str)
    if option.choices:
        kind = Literal[option.choices]  # type: ignore[valid-type]
    bounds = {"ge": option.minimum, "le": LIMITS.get(name), "strict": True if kind in (int, bool) else None}
    constraints = {key: value for key, value in bounds.items() if value is not None}
    if default_of(item) is None:
        kind = Optional[kind]
    return kind, Field(default_of(item), description=WEB_HELP.get(name, option.help), **constraints)


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description=f"The text, at most {MAX_CHARS} characters and {MAX_TOKENS} tokens.")
    model: Optional[str] = Field(None, description="A model id from GET /api/models; default: the first one.")


AnalyzeRequest = create_model(
    "AnalyzeRequest",
    __base__=_Base,
    __doc__="What to analyse: the text, a served model's id, and every setting a request may choose.",
    **{item.name: _request_field(item.name) for item, option in options() if option.web},
)


class CompareRequest(BaseModel):
    """Runs to draw side by side: run A first, each an analysis request of its own."""

    model_config = ConfigDict(extra="forbid")

    runs: list[AnalyzeRequest] = Field(  # type: ignore[valid-type]
        min_length=2, max_length=MAX_RUNS, description=f"2 to {MAX_RUNS} analysis requests; tokens are matched to run A's by text."
    )


class ServedModel(BaseModel):
    """A model this server may run."""

    id: str = Field(description="What a request's `model` field names.")
    label: str
    reason: str = Field(description="Where the model came from and why it is the one in use.")
    layers: int
    vocab_size: int
    max_tokens: int = Field(description="The longest text this server accepts with this model, in tokens.")
    device: str = Field(description="Where the model runs (cpu, cuda:0, …).")
    head: bool = Field(description="Whether the model has an output head: head_rank and the head's predictions.")
    notes: list[str] = Field(description="What to know about this model's numbers (said on the page's model line).")


class ServerInfo(BaseModel):
    """The models, settings and limits of this server, and the definition of every measure."""

    models: list[ServedModel]
    measures: list[dict[str, Any]] = Field(description="Each measure's name, title, description, unit and format.")
    text_measures: list[dict[str, Any]] = Field(description="The same for each measure of the whole text, per layer.")
    taps: list[str]
    references: list[str]
    normalizations: list[str]
    stats: list[str] = Field(description="The statistics a request may normalize with (its `stats`), by id.")
    lenses: list[dict[str, Any]] = Field(
        default_factory=list, description="The learned lenses a request may add (its `lens`): name, model, tap, reference, target."
    )
    defaults: dict[str, Any]
    limits: dict[str, int]


CONTRACT = (
    "The JSON contract shared with `attention-encodings analyze --format json`: model, tap, reference, top_k, "
    "normalize, stats, tokens, layers, "
    + ", ".join(f"{m.name} ({'[l][token], layers l to l+1' if m.steps else '[layer][token]'})" for m in MEASURES.values())
    + ", "
    + ", ".join(f"{m.name} ([layer], of the whole text)" for m in TEXT_MEASURES.values())
    + ", neighbours ([layer][token], nearest first), when `similarity` is true, similarity ([layer][token][token]), "
    "when `attribution` is true, attribution (components, layers, shares [layer][component][token], heads and, for "
    "texts of up to 64 tokens, attention, source_shares, source_norms [layer][head][token][source] and "
    "ablation_rank [layer][head][token]; else a note) "
    f"and, where the model has an output head, its predictions ({', '.join(HEAD_MEASURES)} is absent without one "
    "and null where a token has no target). GET /api/models describes each measure."
)


def load_allowed(names: Sequence[str | None], settings: Settings = Settings()) -> dict[str, LoadedModel]:
    """Load every model the server may run, by the id requests will use (None: the default resolution), on the
    device and in the dtype of `settings`."""
    return {
        DEFAULT_MODEL_ID if name is None else name: load_model(name, device=settings.device, dtype=settings.dtype)
        for name in names
    }


def served_names(allowed: dict[str, LoadedModel]) -> dict[str, str]:
    """Every name a request may give a served model, mapped to its id: the id itself, and the names a user would
    type for that model (its hub id or directory as loaded, and `bundled` for the bundled model); an id always
    names its own model."""
    names = {}
    for model_id, handle in allowed.items():
        typed = [handle.name, *([BUNDLED_ALIAS] if handle.label == f"{BUNDLED_LABEL} (bundled)" else [])]
        names |= {name: model_id for name in typed if name not in names}
    return names | {model_id: model_id for model_id in allowed}


def chart_payload(runs: Sequence[tuple[ServedModel, Analysis]]) -> dict[str, Any]:
    """What the page draws for one run or several side by side (run A first): the last run's model, run A's
    tokens and default selection, each run's label, the measures and item tables drawn (those every run has),
    every chart's Vega-Lite spec and, once, the datasets the specs name (the page puts them back into each spec),
    a note naming tokens not in every run and, where every run has its attribution, each run's layers, heads and
    note (what the page's panel of heads needs to move between cells)."""
    first = runs[0][1]
    comparison = compare([result for _, result in runs])
    specs, data = page_specs(comparison)
    return {
        "model": runs[-1][0].model_dump(),
        "runs": [{"label": label, "model": model.id} for label, (model, _) in zip(comparison.labels, runs)],
        "tokens": [token.__dict__ for token in first.tokens],
        "selected": default_token(first),
        "measures": [m.name for m in first.charted if m.name in specs],
        "tables": [name for name in TABLES if name in specs],
        "charts": specs,
        "datasets": data,
        "note": comparison.note(),
        "attribution": _heads_of([result for _, result in runs]),
    }


def _heads_of(results: Sequence[Analysis]) -> list[dict[str, Any]] | None:
    """Each run's layers, heads and attribution note, or None unless every run has its attribution."""
    found = [result.attribution for result in results]
    if any(item is None for item in found):
        return None
    return [{"layers": len(item.layers), "heads": item.num_heads, "note": item.note} for item in found if item is not None]


def _validation_detail(error: RequestValidationError) -> tuple[int, str]:
    """A status and one line for a body that is not JSON (400) or does not fit `AnalyzeRequest` (422)."""
    problems = error.errors()
    broken = next((p for p in problems if p.get("type") == "json_invalid"), None)
    if broken is not None:
        reason = (broken.get("ctx") or {}).get("error", "invalid JSON")
        return 400, f"request body is not valid JSON: {reason} (at character {broken['loc'][-1]})"
    parts = []
    for problem in problems:
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
        if not where:
            parts.append('the request body must be a JSON object such as {"text": "..."}, sent as application/json')
        else:
            parts.append(f"{where or 'body'}: {problem.get('msg', 'invalid')}")
    return 422, "; ".join(parts)


def create_app(
    models: Sequence[str | None] = (None,), settings: Settings = Settings(), stats: Sequence[str] = (), lenses: Sequence[str] = ()
) -> FastAPI:
    """The web app, allowed to run exactly `models` (hub ids, directories, "bundled"; None: the default),
    each loaded once on the device and in the dtype of `settings`, and to normalize with exactly the statistics
    files `stats`, each read once, now (a request names one by the string given here); `sample` offers the
    statistics of the bundled sample corpus, for each model and tap; and to add exactly the learned `lenses`
    (folders fit-lens wrote), each read now and named by its folder's name (`tuned_lens.offered_lenses`)."""
    offered_lenses = offered_lenses_of(lenses)
    allowed = load_allowed(models, settings)
    check_offered(offered_lenses, list(allowed.values()))
    offered: dict[str, Stats | None] = {source: None if source == SAMPLE_STATS else read_stats(source) for source in stats}
    if SAMPLE_STATS in offered:  # computed (or read from the cache) now at the default tap; other taps when asked
        for handle in allowed.values():
            sample_stats(handle, settings.tap)
    served = {
        model_id: ServedModel(
            id=model_id,
            label=handle.label,
            reason=handle.reason,
            layers=handle.num_layers,
            vocab_size=handle.vocab_size,
            max_tokens=min(MAX_TOKENS, handle.max_tokens),
            device=str(handle.device),
            head=head_lens_for(handle) is not None,
            notes=list(model_notes(handle)),
        )
        for model_id, handle in allowed.items()
    }
    app = FastAPIOffline(
        title="attention-encodings",
        version=__version__,
        description="Trace every token through every layer of a transformer and measure how its "
        "representation moves: cosine, rank, neighbour churn and, through the model's own output head, head rank.",
    )
    app.state.served = served
    app.add_middleware(Guard, max_body=MAX_BODY_BYTES)
    names = served_names(allowed)

    @lru_cache(maxsize=CACHE_SIZE)
    def cached(model_id: str, text: str, settings: Settings) -> Analysis:
        return analyze_with(
            settings, text, allowed[model_id], stats=offered.get(settings.stats or ""), lens=offered_lenses.get(settings.lens or "")
        )

    def chosen_stats(normalize: str, stats: str | None) -> str | None:
        """The statistics id a request normalizes with: its own, else the first offered; never a path."""
        if normalize == "none" or (stats is not None and stats in offered):
            return stats
        if stats is not None:
            listing = ", ".join(offered) or "none (start the server with --stats FILE)"
            raise InputError(f"unknown stats {stats!r}; this server offers: {listing}")
        if not offered:
            raise InputError(f"normalize {normalize} needs statistics, and this server has none; start it with --stats FILE")
        return next(iter(offered))

    def settings_for(request: AnalyzeRequest) -> tuple[str, Settings]:
        """The served model a request names, and its settings (with the statistics it normalizes with)."""
        model_id = names.get(request.model or next(iter(served)), request.model or "")
        if model_id not in served:
            also = {i: [n for n, to in names.items() if to == i and n != i] for i in served}
            runs = ", ".join(f"{i} (also {', '.join(also[i])})" if also[i] else i for i in served)
            raise InputError(f"unknown model {request.model!r}; this server runs: {runs}")
        chosen = request.model_dump(exclude={"text", "model"})
        chosen["stats"] = chosen_stats(request.normalize, request.stats)
        if request.lens is not None and request.lens not in offered_lenses:
            listing = ", ".join(offered_lenses) or "none (start the server with --lens LENS_DIR)"
            raise InputError(f"unknown lens {request.lens!r}; this server offers: {listing}")
        return model_id, Settings(model=allowed[model_id].name, **chosen)

    def run(request: AnalyzeRequest) -> tuple[ServedModel, Analysis]:
        model_id, settings = settings_for(request)
        text = check_text(request.text)
        if len(text) > MAX_CHARS:
            raise InputError(f"text is {len(text)} characters long; this server accepts at most {MAX_CHARS}")
        limit = served[model_id].max_tokens
        if text.strip() and (count := len(allowed[model_id].tokenizer(text, verbose=False)["input_ids"])) > limit:
            raise InputError(f"text is {count} tokens long; this server accepts at most {limit} with {served[model_id].label}")
        return served[model_id], cached(model_id, text, settings)

    @app.exception_handler(InputError)
    async def input_error(request: Request, error: InputError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        status, detail = _validation_detail(error)
        return JSONResponse({"detail": detail}, status_code=status)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/vendor/vega.js", include_in_schema=False)
    def vega() -> Response:
        return Response(vega_javascript(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/models", response_model=ServerInfo)
    def list_models() -> ServerInfo:
        """The models this server runs (the first is the default), the taps, references, defaults and limits."""
        return ServerInfo(
            models=list(served.values()),
            measures=[asdict(info) for info in MEASURES.values()],
            text_measures=[asdict(info) for info in TEXT_MEASURES.values()],
            taps=list(TAPS),
            references=list(REFERENCES),
            normalizations=list(NORMALIZATIONS),
            stats=list(offered),
            lenses=[{"name": name, **{key: lens.meta.get(key) for key in ("model", "tap", "reference", "target")}} for name, lens in offered_lenses.items()],
            defaults={item.name: default_of(item) for item, option in options() if option.web},
            limits={"max_chars": MAX_CHARS, "max_tokens": MAX_TOKENS, "max_neighbours": MAX_NEIGHBOURS},
        )

    @app.post("/api/analyze", responses={200: {"description": CONTRACT, "content": {"application/json": {}}}})
    def analyze_json(request: AnalyzeRequest) -> Response:
        """Measure every token at every layer; the same JSON as the command line's `--format json`."""
        return Response(run(request)[1].to_json(), media_type="application/json")

    @app.post("/api/analyze/csv", responses={200: {"content": {"text/csv": {}}}})
    def analyze_csv(request: AnalyzeRequest) -> Response:
        """The same analysis as a tidy CSV table, as `--format csv` writes it: a row per (token, layer)."""
        check_csv(settings_for(request)[1])
        headers = {"Content-Disposition": 'attachment; filename="attention-encodings.csv"'}
        result = run(request)[1]
        frame = result.to_frame() if result.attribution is None else result.attribution.to_frame()
        return Response(frame.to_csv(index=False), media_type="text/csv", headers=headers)

    @app.post("/api/charts")
    def chart_specs(request: AnalyzeRequest) -> dict[str, Any]:
        """Every chart of the analysis as a Vega-Lite spec, with the tokens: what the page draws."""
        return chart_payload([run(request)])

    @app.post("/api/compare")
    def compare_specs(request: CompareRequest) -> dict[str, Any]:
        """Runs side by side (run A first; tokens matched by text): every chart as a Vega-Lite spec, a line per
        run in the line charts, the heatmaps and neighbour tables side by side; what the page draws when pinned."""
        return chart_payload([run(item) for item in request.runs])

    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` (0: any free port), or a one-line `InputError` saying why not."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        bound = socket.socket(family, kind, protocol)
        bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        bound.bind(address)
    except OSError as error:
        raise InputError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    return bound


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (localhost, 127.0.0.0/8, ::1)."""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def serve(
    models: Sequence[str | None],
    host: str,
    port: int,
    open_browser: bool = False,
    settings: Settings = Settings(),
    stats: Sequence[str] = (),
    lenses: Sequence[str] = (),
) -> None:
    """Load the allowed models, statistics and lenses, then serve the page and the API until interrupted, placed
    as `settings` says (device, dtype and threads)."""
    set_threads(settings.threads)
    app = create_app(models, settings, stats, lenses)
    bound = listen(host, port)
    vega_javascript()  # built once (about a second) before the first page asks for it
    if not is_loopback(host):
        warning = f"warning: {host} is reachable beyond this machine and this server has no authentication"
        print(f"{warning}: anyone who can reach it can use it", file=sys.stderr, flush=True)
    shown = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
    url = f"http://{shown}:{bound.getsockname()[1]}/"
    if open_browser:
        threading.Timer(1.0, webbrowser.open, [url]).start()
    for model in app.state.served.values():
        notes = "".join(f"; {note}" for note in model.notes)
        print(f"model {model.id!r}: {model_said(model.label, model.reason, model.device)}{notes}", flush=True)
    print(f"attention-encodings: serving {url} (API docs at {url}docs); Ctrl+C stops", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[bound])
