"""Metrics layer: lenses onto the vocabulary (reference spaces) and the measures, as pure tensor functions
(their definitions for people are in `catalog`)."""

from ..names import DEFAULT_REFERENCE, REFERENCES
from .lens import ROW_FLOATS, HeadLens, Lens, padded_rows
from .measures import DEFAULT_CHUNK_BYTES, Measures, Progress, Scan, blocked_top_k, measure, scan, top_k_overlap
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
    "REFERENCES",
    "ROW_FLOATS",
    "SIMILARITY",
    "EmbeddingReference",
    "HeadLens",
    "Lens",
    "Measures",
    "Progress",
    "ReferenceSpace",
    "Scan",
    "WordReference",
    "anisotropy",
    "blocked_top_k",
    "check_reference",
    "embedding_is_word",
    "measure",
    "padded_rows",
    "reference_space",
    "scan",
    "token_similarity",
    "top_k_overlap",
    "unit",
]
