"""attention-encodings: watch every token's representation move through the layers of a transformer.

    >>> from attention_encodings import analyze
    >>> result = analyze("Time flies like an arrow. Fruit flies like a banana.")
    >>> result.to_frame()  # one row per (token, layer): cosine, rank, overlap with the next layer
    >>> result  # in Jupyter: every chart (see attention_encodings.views for one chart, or to save one)
"""

from ._version import __version__
from .analysis import Analysis, Neighbour, Token, Trajectory, analyze, analyze_with
from .errors import AttentionEncodingsError, InputError, ModelLoadError, OptionError, UnsupportedArchitectureError
from .faces import notebook
from .metrics import MEASURES, REFERENCES, MeasureInfo
from .models import LoadedModel, load_model
from .settings import Settings
from .trace import TAPS

notebook.register()

__all__ = [
    "MEASURES",
    "REFERENCES",
    "TAPS",
    "Analysis",
    "AttentionEncodingsError",
    "InputError",
    "LoadedModel",
    "MeasureInfo",
    "ModelLoadError",
    "Neighbour",
    "OptionError",
    "Settings",
    "Token",
    "Trajectory",
    "UnsupportedArchitectureError",
    "__version__",
    "analyze",
    "analyze_with",
    "load_model",
]
