"""One settings object for an analysis: what every face passes down, validated in one place.

`analyze()`, the command line's `analyze` and `plot`, and the server's request body and cache key all carry a
`Settings`. Each field's metadata (`Option`) says how faces offer it: its help text, its choices or bounds, and
whether a web request may set it. The command line builds its options from these fields and the server its
request schema, so a new option is one field here. Like `names`, it imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields, replace
from itertools import product
from typing import Any

from .errors import OptionError
from .names import (
    BUNDLED_ALIAS,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_REFERENCE,
    DEFAULT_SCAN,
    DEFAULT_TAP,
    DEVICES,
    DTYPE_NAMES,
    NORMALIZATIONS,
    REFERENCES,
    SCANS,
    SMOLLM2_ALIAS,
    TAPS,
)

DEFAULT_TOP_K = 100
DEFAULT_NEIGHBOURS = 15
MAX_RUNS = 4
"""The most runs one comparison overlays (`runs()`)."""


@dataclass(frozen=True)
class Option:
    """How faces offer one settings field."""

    help: str
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    web: bool = True
    """Whether a web request may set it (a server decides where its models run, and which models they are)."""
    flags: tuple[str, ...] = ()
    """Command-line names besides `--field-name` (such as `-m`)."""
    open_choices: bool = False
    """The choices are examples, not the only values accepted (devices take `cuda:N` too)."""


def _option(default: Any, help: str, **details: Any) -> Any:
    return field(default=default, metadata={"option": Option(help, **details)})


@dataclass(frozen=True)
class Settings:
    """What to analyse and how: the model, where to read it, what to compare with, and where it runs."""

    model: str | None = _option(
        None,
        f"Hub id, local directory, '{BUNDLED_ALIAS}' or '{SMOLLM2_ALIAS}' (the offline decoder). "
        "Default: roberta-base if it can be loaded, "
        "else the bundled all-MiniLM-L6-v2.",
        flags=("-m",),
        web=False,
    )
    tap: str = _option(DEFAULT_TAP, "Where to read each layer.", choices=TAPS)
    reference: str = _option(DEFAULT_REFERENCE, "Reference space.", choices=REFERENCES)
    top_k: int = _option(DEFAULT_TOP_K, "Neighbourhood size for the overlap measure.", minimum=1)
    neighbours: int = _option(DEFAULT_NEIGHBOURS, "Nearest vocabulary items to report per token and layer.", minimum=0)
    similarity: bool = _option(
        False, "Also measure every token's cosine to every other token at each layer ((N+1)×T×T, so off by default)."
    )
    normalize: str = _option(
        "none",
        "Normalise the tapped vectors and the reference rows with corpus statistics before measuring (center: "
        "subtract each layer's mean; standardize: also divide by its std).",
        choices=NORMALIZATIONS,
    )
    stats: str | None = _option(
        None,
        "The statistics --normalize uses: a stats.npz file as 'attention-encodings corpus' writes it (mean and std "
        "per layer) or 'sample': the bundled sample corpus's, for this model and tap (computed once, then cached).",
    )
    truncate: bool = _option(False, "Cut text longer than the model's limit instead of refusing it.", web=False)
    device: str = _option(
        DEFAULT_DEVICE, "Where the model runs (auto: CUDA if available, else the CPU).", choices=DEVICES, web=False,
        open_choices=True,
    )
    dtype: str = _option(DEFAULT_DTYPE, "Model precision (the measures stay float32).", choices=DTYPE_NAMES, web=False)
    scan: str = _option(
        DEFAULT_SCAN,
        "The vocabulary product: bfloat16 candidate scores checked in float32 wherever they could change an answer "
        "(the same results), or float32 throughout; auto: bfloat16 on AMX / AVX-512 BF16 CPUs and CUDA compute "
        "capability 8.0+. Default float32: the checks do not yet cost less than the bfloat16 product saves.",
        choices=SCANS,
    )
    threads: int | None = _option(None, "CPU threads for torch (default: one per usable core).", minimum=1, web=False)

    def __post_init__(self) -> None:
        for item in fields(self):
            check_value(item, getattr(self, item.name))
        if self.normalize != "none" and self.stats is None:
            raise OptionError(f"normalize {self.normalize} needs statistics: give stats (a stats.npz file or 'sample')")
        if self.normalize == "none" and self.stats is not None:
            raise OptionError(f"stats {self.stats!r} are used only to normalize; give normalize center or standardize")

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied (and checked)."""
        return replace(self, **changes)


def options() -> list[tuple[Field[Any], Option]]:
    """Every settings field with its `Option`, in order."""
    return [(item, item.metadata["option"]) for item in fields(Settings)]


def default_of(item: Field[Any]) -> Any:
    return None if item.default is MISSING else item.default


def check_value(item: Field[Any], value: Any) -> Any:
    """`value` if it suits the field, else a one-line `OptionError` naming the field and what it accepts."""
    option: Option = item.metadata["option"]
    name = item.name
    if value is None and default_of(item) is None:
        return value
    if item.type in ("int", "int | None"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(f"{name} must be a whole number, not {value!r}")
        if option.minimum is not None and value < option.minimum:
            raise OptionError(f"{name} must be at least {option.minimum}; got {value}")
    elif item.type == "bool":
        if not isinstance(value, bool):
            raise OptionError(f"{name} must be true or false, not {value!r}")
    elif not isinstance(value, str):
        raise OptionError(f"{name} must be a string, not {type(value).__name__}")
    elif option.choices and not option.open_choices and value not in option.choices:
        raise OptionError(f"unknown {name} {value!r}; choose one of: {', '.join(option.choices)}")
    return value


def runs(repeated: dict[str, list[Any]], **fixed: Any) -> tuple[Settings, ...]:
    """One `Settings` per combination of the `repeated` fields' values (their product, in field order: every tap
    of the first model, then of the second…), each with the `fixed` fields; at most `MAX_RUNS`, and no value
    twice, else a one-line `OptionError`."""
    order = [item.name for item in fields(Settings) if item.name in repeated]
    for name in order:
        twice = next((value for index, value in enumerate(repeated[name]) if value in repeated[name][:index]), MISSING)
        if twice is not MISSING:
            raise OptionError(f"{name} {twice!r} is given twice; each run must differ")
    count = 1
    for name in order:
        count *= len(repeated[name])
    if count > MAX_RUNS:
        sizes = " × ".join(f"{len(repeated[name])} {name}s" for name in order if len(repeated[name]) > 1)
        raise OptionError(f"at most {MAX_RUNS} runs can be compared; {sizes} make {count}")
    return tuple(Settings(**fixed, **dict(zip(order, values))) for values in product(*(repeated[name] for name in order)))


def check_csv(settings: Settings) -> Settings:
    """`settings` if a CSV can hold what they ask for, else a one-line `OptionError`: the CSV is the tidy table of
    `Analysis.to_frame()`, one row per token and layer, which has no place for a token × token similarity."""
    if settings.similarity:
        raise OptionError("the similarity is part of the JSON, not the CSV (one row per token and layer); ask for JSON")
    return settings
