"""A lens reads hidden vectors out over the vocabulary: one score per vocabulary item (in the spirit of
tuned-lens's `Lens`). Reference spaces score by cosine to each item's reference encoding; the head lens by
the model's own output logits. Every rank and top-k measure is computed the same way over any lens."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

ROW_FLOATS = 64
"""Score rows are laid out padded to a multiple of this many floats: MKL writes a GEMM result whose rows have
an odd length (roberta-base's 50,265) about 30 % slower than one with aligned rows."""


class Lens(ABC):
    """Scores of hidden vectors against every vocabulary item."""

    name: str

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    @abstractmethod
    def scores(self, states: Tensor, offsets: Tensor, out: Tensor | None = None) -> Tensor:
        """Scores (t, r, V) of `states` (t, r, h): r vectors for each of t tokens; `offsets` (t, e) is each
        token's slot offset `c_p = P[pos] + T[type]` (lenses that do not depend on the slot ignore it). Written
        into `out` (t × r × V float32, rows contiguous, the row stride free) when given, so that chunked callers
        reuse one buffer with padded rows; else into a new one laid out that way."""


def padded_rows(rows: int, width: int, device: torch.device) -> Tensor:
    """An uninitialised (rows, width) float32 matrix whose rows are padded to a multiple of ROW_FLOATS."""
    return torch.empty(rows, -(-width // ROW_FLOATS) * ROW_FLOATS, device=device)[:, :width]


class HeadLens(Lens):
    """The model's own output head as a lens (the logit lens): scores are the logits it gives a hidden vector.

    `head` is the function `Adapter.head` returns (final norm, then the head modules), so nothing of the head is
    re-derived here; it runs in the model's dtype, and its logits are read into float32 rows."""

    name = "head"

    def __init__(self, head: Callable[[Tensor], Tensor], vocab_size: int) -> None:
        super().__init__(vocab_size)
        self.head = head

    def scores(self, states: Tensor, offsets: Tensor, out: Tensor | None = None) -> Tensor:
        t, r, h = states.shape
        logits = self.head(states.reshape(t * r, h)).view(t, r, self.vocab_size)
        target = padded_rows(t * r, self.vocab_size, states.device).view(t, r, -1) if out is None else out
        return target.copy_(logits)
