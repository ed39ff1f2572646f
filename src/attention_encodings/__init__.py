"""attention-encodings: watch every token's representation move through the layers of a transformer.

    >>> from attention_encodings import analyze
    >>> result = analyze("Time flies like an arrow. Fruit flies like a banana.")
    >>> result.to_frame()  # one row per (token, layer): cosine, rank, overlap with the next layer
"""

from importlib.metadata import PackageNotFoundError, version

from .analysis import Analysis, Neighbour, Token, Trajectory, analyze
from .errors import AttentionEncodingsError, InputError, ModelLoadError, UnsupportedArchitectureError
from .metrics import REFERENCES
from .models import LoadedModel, load_model
from .trace import TAPS

try:
    __version__ = version("attention-encodings")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "REFERENCES",
    "TAPS",
    "Analysis",
    "AttentionEncodingsError",
    "InputError",
    "LoadedModel",
    "ModelLoadError",
    "Neighbour",
    "Token",
    "Trajectory",
    "UnsupportedArchitectureError",
    "__version__",
    "analyze",
    "load_model",
]
