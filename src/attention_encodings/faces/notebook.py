"""The notebook face: in Jupyter or IPython, an `Analysis` displays as its charts.

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


def mimebundle(result: Analysis) -> Any:
    """What a notebook shows for `result`: the MIME bundle of its full figure."""
    from ..views import figure  # on first display only: `import attention_encodings` need not load Altair

    return figure(result)._repr_mimebundle_()


def register() -> bool:
    """Display every `Analysis` as its charts in the running IPython; False (and nothing done) outside one."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return False
    shell.display_formatter.mimebundle_formatter.for_type_by_name("attention_encodings.analysis", "Analysis", mimebundle)
    return True
