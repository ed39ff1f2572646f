"""How a token or vocabulary item is shown to a person: one convention for tables, charts, the page and messages.

A space at either end shows as `␣` (`' flies'` → `␣flies`, as byte-level BPE models write it), characters that do
not print as their escape (`\\n`), and a piece that is not whole characters (byte-level BPE splits 東 into three
pieces) as its bytes, `<0xE6><0x9D>`, the way Llama's tokenizers name byte pieces. The exact strings stay in JSON,
CSV and frames; only a piece with no text of its own is written as its bytes there too (`byte_piece`). Imports
nothing heavy, so every layer may use it.
"""

from __future__ import annotations

import codecs
from functools import cache

SPACE = "␣"
"""How a space at either end of a token shows."""
_ERRORS = "attention-encodings-bytes"


def _as_bytes(error: UnicodeDecodeError) -> tuple[str, int]:
    return "".join(f"<0x{b:02X}>" for b in error.object[error.start : error.end]), error.end


codecs.register_error(_ERRORS, _as_bytes)


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's map from the printable characters byte-level BPE writes back to the bytes they stand for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = dict(zip(printable, printable))
    extra = (b for b in range(256) if b not in chars)
    chars |= {b: 256 + n for n, b in enumerate(extra)}
    return {chr(char): byte for byte, char in chars.items()}


def byte_piece(piece: str) -> str:
    """A byte-level BPE piece that does not decode to whole characters (`'Ġæ'`) as the text it holds with its
    stray bytes written out (`' <0xE6>'`); a piece in another alphabet (SentencePiece's `<0xE4>`) unchanged."""
    decoder = _byte_decoder()
    if not piece or any(char not in decoder for char in piece):
        return piece
    return bytes(decoder[char] for char in piece).decode("utf-8", errors=_ERRORS)


def shown(text: str) -> str:
    """`text` as a person reads it: spaces at either end as `␣`, unprintable characters escaped (`\\n`), an empty
    text as `''`."""
    if not text:
        return "''"
    core = text.strip(" ")
    if not core:
        return SPACE * len(text)
    lead, trail = len(text) - len(text.lstrip(" ")), len(text) - len(text.rstrip(" "))
    return SPACE * lead + "".join(c if c.isprintable() else repr(c)[1:-1] for c in core) + SPACE * trail


def typed(query: str) -> str:
    """A token as a person may type it back (`␣flies`): the text it stands for (`' flies'`)."""
    return query.replace(SPACE, " ")


def brief(kind: str, **fields: object) -> str:
    """A result's short repr, `Kind(key=value, …)`: what it is about, never its arrays."""
    return f"{kind}({', '.join(f'{key}={value}' for key, value in fields.items())})"


def layer_span(layers: tuple[int, ...] | list[int]) -> str:
    """Layers as a span, `0..30`."""
    return f"{layers[0]}..{layers[-1]}" if len(layers) else "none"


def listing(texts: list[str], most: int = 6) -> str:
    """The first `most` texts as shown, then how many more: `[Fruit ␣flies … +10]`."""
    more = f" … +{len(texts) - most}" if len(texts) > most else ""
    return "[" + " ".join(shown(t) for t in texts[:most]) + more + "]"


def model_said(label: str, reason: str, placement: str) -> str:
    """The model in use as its line says it (command line, server, corpus report): `all-MiniLM-L6-v2 (bundled),
    named explicitly, on cpu, float32`."""
    return f"{label}, {reason}, on {placement}"
