"""What each measure is, defined once: every face (tables, JSON, CSV, charts, the page) reads these.

A new measure is one `MeasureInfo` here plus the code that computes it (`analysis.measure_texts`); titles, axes,
number formats, scales, whether it lives on layers or on layer pairs, and whether it has a chart of its own or is
a baseline drawn inside another measure's chart all come from its entry. Like `names`, it imports nothing heavy,
so the command line can list the measures at once.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, Literal

Scale = Literal["linear", "symlog"]


@dataclass(frozen=True)
class MeasureInfo:
    """One measure's definition: its name, how to say it, how to print it, and how to draw it."""

    name: str
    """The key in the JSON contract and the attribute of an `Analysis`."""
    title: str
    """Chart and table title; may name a setting in braces (`{top_k}`)."""
    description: str
    """One line saying what the number means."""
    unit: str
    """Axis and legend label."""
    format: str
    """Number format, read by both Python's `format()` and d3-format (`.3f`, `d`)."""
    scale: Scale = "linear"
    domain: tuple[float | str, float | str] | None = None
    """Fixed axis bounds, or None to fit the data; a string names a setting (`top_k`)."""
    steps: bool = False
    """True: one value per pair of consecutive layers (l, l + 1), N rows; False: one per layer, N + 1 rows."""
    integer: bool = False
    nullable: bool = False
    """Whether some tokens may lack a value (the head lens has no next token to predict after the last one)."""
    lower_is_closer: bool = False
    """Whether a smaller value means "still closer to the original" (rank), which flips colour scales."""
    baseline_of: str | None = None
    """The measure this one is a baseline for (vocab_mean for cosine): drawn inside that measure's chart, for the
    selected token, with no chart, heatmap or table of its own. None: the measure has its own."""
    band: str | None = None
    """For a baseline: the measure that gives the ±1 band around it (vocab_std around vocab_mean)."""
    short: str = ""
    """Column header where space is short (the one-token table); the name when empty."""

    @property
    def charted(self) -> bool:
        """Whether the measure has a line chart, a heatmap and a table of its own."""
        return self.baseline_of is None

    @property
    def header(self) -> str:
        return self.short or self.name

    @property
    def named(self) -> str:
        """The measure's name for people: its title up to any colon (`z-score`, `Head rank`), where a chart has
        room for no more (heatmaps)."""
        return self.title.split(":")[0]

    @property
    def column(self) -> str:
        """The tidy-frame and CSV column: a layer-pair measure is named for the step to the next layer."""
        return f"{self.name}_next" if self.steps else self.name

    def titled(self, settings: Any) -> str:
        """The title, with settings such as `top_k` filled in from `settings` (any object with those fields)."""
        return self.title.format(**{key: getattr(settings, key) for key in _placeholders(self.title)})

    def bounds(self, settings: Any) -> list[float] | None:
        """The fixed domain with settings filled in, or None."""
        if self.domain is None:
            return None
        return [getattr(settings, bound) if isinstance(bound, str) else bound for bound in self.domain]


def _placeholders(text: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(text) if field]


COSINE = MeasureInfo(
    "cosine",
    "Cosine to the original encoding",
    "cosine similarity of the token's representation to its own reference (original) encoding",
    "cosine",
    ".3f",
)
RANK = MeasureInfo(
    "rank",
    "Rank: vocabulary items closer than the original",
    "how many vocabulary items are closer to the representation than the token's own original encoding",
    "rank (symlog)",
    "d",
    scale="symlog",
    integer=True,
    lower_is_closer=True,
)
OVERLAP = MeasureInfo(
    "overlap",
    "Overlap: top-{top_k} neighbours kept from layer l to l+1",
    "how many of the top-k nearest vocabulary items at layer l are still among the top-k at layer l + 1",
    "neighbours kept",
    "d",
    domain=(0, "top_k"),
    steps=True,
    integer=True,
)

SIMILARITY = MeasureInfo(
    "similarity",
    "Similarity of two tokens",
    "cosine similarity of two tokens' representations at the same layer",
    "cosine",
    ".3f",
)
"""Not a measure of one token (so not in `MEASURES`) but of a pair: `Analysis.pair` and the pair charts."""

VOCAB_MEAN = MeasureInfo(
    "vocab_mean",
    "Vocabulary mean",
    "mean cosine of the token's representation to every vocabulary item's reference encoding: what cosine a typical "
    "item gets",
    "cosine",
    ".3f",
    baseline_of="cosine",
    band="vocab_std",
)
VOCAB_STD = MeasureInfo(
    "vocab_std",
    "Vocabulary standard deviation",
    "population standard deviation of those cosines over the whole vocabulary",
    "cosine",
    ".3f",
    baseline_of="cosine",
)
ZSCORE = MeasureInfo(
    "zscore",
    "z-score: standard deviations above the vocabulary mean",
    "(cosine − vocab_mean) / vocab_std: how far the token's own original stands above a typical vocabulary item",
    "z (std above the vocabulary mean)",
    ".2f",
    short="z",
)

HEAD_RANK = MeasureInfo(
    "head_rank",
    "Head rank: vocabulary items the output head prefers to the target",
    "how many vocabulary items the model's own output head, applied to the representation, gives a higher logit "
    "than the target (a masked LM: the token itself; a causal LM: the next token, none after the last)",
    "head rank (symlog)",
    "d",
    scale="symlog",
    integer=True,
    nullable=True,
    lower_is_closer=True,
)

TUNED_RANK = MeasureInfo(
    "tuned_rank",
    "Tuned rank: vocabulary items the head prefers to the target, through the learned lens",
    "head_rank of the representation after the learned lens's translator for its layer (--lens, target final): "
    "how many items the output head ranks above the target once the vector is read as the last layer's",
    "tuned rank (symlog)",
    "d",
    scale="symlog",
    integer=True,
    nullable=True,
    lower_is_closer=True,
)
TUNED_KL = MeasureInfo(
    "tuned_kl",
    "Tuned KL: bits from the model's final prediction, through the learned lens",
    "KL divergence from the model's final output distribution to the head's distribution of the translated "
    "representation (--lens, target final), in bits (0 = the same prediction)",
    "KL (bits)",
    ".3f",
    lower_is_closer=True,
)
PROBE_COSINE = MeasureInfo(
    "probe_cosine",
    "Probe cosine to the original encoding, through the learned lens",
    "cosine of the representation, after the learned lens's translator back to the input (--lens, target "
    "embedding), to the token's own reference encoding",
    "cosine",
    ".3f",
)
PROBE_RANK = MeasureInfo(
    "probe_rank",
    "Probe rank: vocabulary items closer than the original, through the learned lens",
    "rank of the token's own reference encoding among the vocabulary, for the representation after the learned "
    "lens's translator back to the input (--lens, target embedding)",
    "probe rank (symlog)",
    "d",
    scale="symlog",
    integer=True,
    lower_is_closer=True,
)

MEASURES: dict[str, MeasureInfo] = {
    info.name: info
    for info in (COSINE, RANK, OVERLAP, VOCAB_MEAN, VOCAB_STD, ZSCORE, HEAD_RANK, TUNED_RANK, TUNED_KL, PROBE_COSINE, PROBE_RANK)
}
"""Every measure of each token, in the order faces show them."""
HEAD_MEASURES: tuple[str, ...] = (HEAD_RANK.name,)
"""The measures that read the model's output head: absent where the loaded model has none."""
LENS_MEASURES: dict[str, tuple[str, ...]] = {
    "final": (TUNED_RANK.name, TUNED_KL.name),
    "embedding": (PROBE_COSINE.name, PROBE_RANK.name),
}
"""The measures a learned lens adds (`--lens`), by its target: absent without one."""

ANISOTROPY = MeasureInfo(
    "anisotropy",
    "Anisotropy of the text",
    "mean cosine between two different non-special tokens of the text at this layer (over ordered pairs p ≠ q; "
    "null with fewer than two): how alike any two of its tokens are (Ethayarajh, 2019)",
    "cosine",
    ".3f",
    baseline_of="cosine",
    nullable=True,
)

TEXT_MEASURES: dict[str, MeasureInfo] = {info.name: info for info in (ANISOTROPY,)}
"""Measures of the whole text: one value per layer, no token axis."""


def baselines(measure: str) -> list[MeasureInfo]:
    """The baselines drawn inside `measure`'s chart, of each token and of the text, in catalog order."""
    return [info for info in (*MEASURES.values(), *TEXT_MEASURES.values()) if info.baseline_of == measure]


def charted() -> list[str]:
    """The measures with a chart, heatmap and table of their own, in the order faces show them."""
    return [name for name, info in MEASURES.items() if info.charted]
