"""Corpus mode: the measures over many texts, batched, summarised by word class, resumable, and on Ray.

A layer between views and faces: it reads sources, measures batches with `analysis.measure_texts` (the one
computation behind `analyze()`), writes Parquet shards, summarises them with DuckDB and draws a report with the
views. Heavy libraries (pyarrow, DuckDB, Ray, spaCy) load only when a corpus runs.
"""

from .run import CorpusAnalysis, CorpusProgress, analyze_corpus, run_corpus
from .sources import SAMPLE, sample_path

__all__ = [
    "SAMPLE",
    "CorpusAnalysis",
    "CorpusProgress",
    "analyze_corpus",
    "run_corpus",
    "sample_path",
]
