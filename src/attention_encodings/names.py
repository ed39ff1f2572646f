"""The names a user chooses from, and their defaults: taps, reference spaces, devices, precisions, the aliases
of the bundled models.

Kept free of heavy imports (torch, transformers), so that the command line builds its options and answers
`--help` or a malformed value at once; the modules that implement each name import it from here.
"""

from __future__ import annotations

from pathlib import Path

TAPS: tuple[str, ...] = ("resid_mid", "attn_ln", "resid_post")
"""`resid_mid`: attention output + residual, the input of the norm that follows it (post-norm blocks: the
attention LayerNorm; pre-norm blocks: the norm before the MLP). `attn_ln`: that norm's output. `resid_post`: the
block's output (post-norm: `hidden_states[l]`; pre-norm: also at the last block, before the final norm)."""
DEFAULT_TAP = "resid_mid"

REFERENCES: tuple[str, ...] = ("embedding", "word")
"""What "the original encoding" of a vocabulary item is: the embedding layer's encoding of it in the token's
slot, or its raw word-embedding row (see `metrics.reference`)."""
DEFAULT_REFERENCE = "embedding"

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
"""`auto` is CUDA when torch can use a GPU, else the CPU. `cuda:N` picks one GPU."""
DEFAULT_DEVICE = "auto"

DTYPE_NAMES: tuple[str, ...] = ("float32", "float16", "bfloat16")
"""Precisions the model may run in (the measures stay float32)."""
DEFAULT_DTYPE = "float32"

NORMALIZATIONS: tuple[str, ...] = ("none", "center", "standardize")
"""How tapped vectors and reference rows are normalised with corpus statistics before measuring (see
`metrics.normalize`)."""
SAMPLE_STATS = "sample"
"""The `stats` value naming the statistics of the bundled sample corpus."""
SAMPLE_CORPUS = Path(__file__).resolve().parent / "corpus" / "data" / "en_ewt-ud-dev.conllu"
"""The bundled sample corpus: UD English-EWT dev, 2,001 gold-tagged sentences (CC BY-SA 4.0; its LICENSE.txt and
README.md sit beside it). `corpus sample` reads it, and `--stats sample` takes its statistics."""

BUNDLED_ALIAS = "bundled"
"""Name that selects the bundled offline model explicitly."""
SMOLLM2_ALIAS = "smollm2"
"""Name that selects the offline decoder, SmolLM2-135M-Instruct (`models/smollm2.py`)."""

FIGURE_FILE_TYPES: tuple[str, ...] = (".png", ".svg", ".pdf", ".html")
"""What a figure is saved as, by file extension; HTML files carry their own copy of Vega, so they open offline."""

CORPUS_FORMATS: tuple[str, ...] = ("auto", "text", "jsonl", "parquet", "conllu")
"""What a corpus input may be read as; `auto` guesses from the file's extension."""
CORPUS_ENGINES: tuple[str, ...] = ("local", "ray")
"""Where a corpus's batches run: in this process, or on Ray Data's model actors."""
DEFAULT_BATCH_TOKENS = 4096
"""Padded tokens per corpus batch (texts × the longest one): bounds a batch's memory whatever the corpus size."""
SHARE_MEASURE = "share"
"""The corpus summary's measure for the attribution's rows, one per (group, layer, component) of `heads/`'s share."""
