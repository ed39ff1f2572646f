"""Metrics layer: lenses onto the vocabulary (reference spaces) and the measures, as pure tensor functions
(their definitions for people are in `catalog`)."""

from ..names import DEFAULT_REFERENCE, NORMALIZATIONS, REFERENCES
from .lens import ROW_FLOATS, HeadLens, Lens, padded_rows
from .measures import (
    DEFAULT_CHUNK_BYTES,
    SPREAD_BLOCK,
    Measures,
    Progress,
    Scan,
    blocked_top_k,
    measure,
    row_mean_std,
    scan,
    top_k_overlap,
)
from .lowp import LowPrecisionLens, fast_bfloat16, path_taken, resolve_scan
from .normalize import Normalization, Stats, moment_sums, normalization
from .reference import (
    EmbeddingReference,
    ReferenceSpace,
    WordReference,
    check_reference,
    embedding_is_word,
    reference_space,
)
from .similarity import anisotropy, token_similarity, unit

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_REFERENCE",
    "NORMALIZATIONS",
    "REFERENCES",
    "ROW_FLOATS",
    "SPREAD_BLOCK",
    "EmbeddingReference",
    "HeadLens",
    "Lens",
    "LowPrecisionLens",
    "Measures",
    "Normalization",
    "Progress",
    "ReferenceSpace",
    "Scan",
    "Stats",
    "WordReference",
    "anisotropy",
    "blocked_top_k",
    "check_reference",
    "embedding_is_word",
    "fast_bfloat16",
    "measure",
    "moment_sums",
    "normalization",
    "padded_rows",
    "path_taken",
    "reference_space",
    "resolve_scan",
    "row_mean_std",
    "scan",
    "token_similarity",
    "top_k_overlap",
    "unit",
]
