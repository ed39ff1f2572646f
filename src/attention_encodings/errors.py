"""The errors this package raises on purpose: each carries one line meant for the user."""

from __future__ import annotations


class AttentionEncodingsError(Exception):
    """Base class: the message is a complete, one-line explanation fit to show a user as is."""


class InputError(AttentionEncodingsError, ValueError):
    """The text or an option is unusable (empty text, too many tokens, bad tap, bad k, …)."""


class ModelLoadError(AttentionEncodingsError, OSError):
    """A model could not be found, downloaded, verified or loaded."""


class UnsupportedArchitectureError(ModelLoadError):
    """The model loaded, but its architecture has no adapter here."""


class OptionError(InputError):
    """An option's value is malformed or not one of its choices: a usage error (the command line exits 2)."""


class TokenError(InputError):
    """No token of the text matches the one asked for (by index or text)."""


class MeasureUnavailableError(InputError, AttributeError):
    """A measure this analysis lacks because its model cannot give it (head_rank where there is no output head).

    An `AttributeError` too, so `getattr(result, "head_rank", None)` and `hasattr` work as Python expects."""
