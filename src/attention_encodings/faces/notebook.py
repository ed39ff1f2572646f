"""The notebook face: in Jupyter or IPython, an `Analysis` displays as its charts, a `Comparison` as its
overlaid charts, and a `CorpusAnalysis` as a short table of its run beside its report's path.

The analysis layer knows nothing of charts, so it has no `_repr_mimebundle_`; instead the package calls
`register()` on import, which, when IPython is running, teaches IPython's display system to draw every
`Analysis` through `views.figure` (all charts, the first non-special token selected). It names the type by its
module and name, so registering imports nothing. For another token or one measure, display
`attention_encodings.views.figure(result, measure, token)` yourself.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..analysis import Analysis
    from ..comparison import Comparison
    from ..corpus import CorpusAnalysis


def mimebundle(result: Analysis) -> Any:
    """What a notebook shows for `result`: the MIME bundle of its full figure."""
    from ..views import figure  # on first display only: `import attention_encodings` need not load Altair

    return figure(result)._repr_mimebundle_()


def comparison_mimebundle(comparison: Comparison) -> Any:
    """What a notebook shows for a `Comparison`: its overlaid figure."""
    from ..views import overlay_figure

    return overlay_figure(comparison)._repr_mimebundle_()


def corpus_html(run: CorpusAnalysis) -> str:
    """What a notebook shows for a `CorpusAnalysis`: its repr's facts as a table, and where its report is."""
    import html

    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in run.about().items())
    report = html.escape(str(run.path / "report.html"))
    return f"<table><caption>CorpusAnalysis</caption>{rows}</table><p>report: <code>{report}</code></p>"


def register() -> bool:
    """Display every `Analysis`, `Comparison` and `CorpusAnalysis` richly in the running IPython; False (and
    nothing done) outside one."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return False
    formatter = shell.display_formatter
    formatter.mimebundle_formatter.for_type_by_name("attention_encodings.analysis", "Analysis", mimebundle)
    formatter.mimebundle_formatter.for_type_by_name("attention_encodings.comparison", "Comparison", comparison_mimebundle)
    formatter.formatters["text/html"].for_type_by_name("attention_encodings.corpus.run", "CorpusAnalysis", corpus_html)
    return True
