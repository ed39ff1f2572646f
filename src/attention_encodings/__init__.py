"""attention-encodings: watch every token's representation move through the layers of a transformer.

    >>> from attention_encodings import analyze
    >>> result = analyze("Time flies like an arrow. Fruit flies like a banana.")
    >>> result.to_frame()  # one row per (token, layer): every measure
    >>> result  # in Jupyter: every chart (see attention_encodings.views for one chart, or to save one)

Names load on first use, so `import attention_encodings` (and the command line's `--help`) pays for torch and
transformers only when a model is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .faces import notebook

if TYPE_CHECKING:
    from .analysis import Analysis, Neighbour, Pair, Prediction, Similarity, Token, Trajectory, analyze, analyze_with
    from .catalog import MEASURES, MeasureInfo
    from .comparison import Comparison, compare
    from .corpus import CorpusAnalysis, analyze_corpus
    from .errors import (
        AttentionEncodingsError,
        InputError,
        MeasureUnavailableError,
        ModelLoadError,
        OptionError,
        UnsupportedArchitectureError,
    )
    from .models import LoadedModel, load_model
    from .names import REFERENCES, TAPS
    from .settings import Settings

_EXPORTS = {
    "analysis": ("Analysis", "Neighbour", "Pair", "Prediction", "Similarity", "Token", "Trajectory", "analyze", "analyze_with"),
    "comparison": ("Comparison", "compare"),
    "corpus": ("CorpusAnalysis", "analyze_corpus"),
    "errors": (
        "AttentionEncodingsError",
        "InputError",
        "MeasureUnavailableError",
        "ModelLoadError",
        "OptionError",
        "UnsupportedArchitectureError",
    ),
    "catalog": ("MEASURES", "MeasureInfo"),
    "models": ("LoadedModel", "load_model"),
    "names": ("REFERENCES", "TAPS"),
    "settings": ("Settings",),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}


__all__ = [
    "MEASURES",
    "REFERENCES",
    "TAPS",
    "Analysis",
    "AttentionEncodingsError",
    "Comparison",
    "CorpusAnalysis",
    "InputError",
    "LoadedModel",
    "MeasureInfo",
    "MeasureUnavailableError",
    "ModelLoadError",
    "Neighbour",
    "OptionError",
    "Pair",
    "Prediction",
    "Settings",
    "Similarity",
    "Token",
    "Trajectory",
    "UnsupportedArchitectureError",
    "__version__",
    "analyze",
    "analyze_corpus",
    "analyze_with",
    "compare",
    "load_model",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is used."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


notebook.register()
