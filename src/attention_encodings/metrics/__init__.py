"""Metrics layer: reference spaces and the measures, as pure tensor functions."""

from .measures import DEFAULT_CHUNK_BYTES, Measures, Progress, blocked_top_k, measure, top_k_overlap
from .reference import (
    DEFAULT_REFERENCE,
    ROW_FLOATS,
    REFERENCES,
    EmbeddingReference,
    ReferenceSpace,
    WordReference,
    check_reference,
    reference_space,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_REFERENCE",
    "REFERENCES",
    "ROW_FLOATS",
    "EmbeddingReference",
    "Measures",
    "Progress",
    "ReferenceSpace",
    "WordReference",
    "check_reference",
    "measure",
    "reference_space",
    "blocked_top_k",
    "top_k_overlap",
]
