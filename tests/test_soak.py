"""A few seconds of the benchmark's web soak (benchmarks/run.py --only soak runs the 60 s one): 16 clients at once
against a live server, every answer equal to the serial one for its text, and no 5xx."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import live_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import run as benchmarks  # noqa: E402


def test_a_short_soak_answers_every_request_correctly(bundled):
    texts = benchmarks.soak_texts(34)  # more than the server's result cache holds, so answers are computed again
    with live_server(["bundled"]) as live:
        result = benchmarks.soak(live.url + "/", 3.0, benchmarks.SOAK_CLIENTS, texts)
    assert result.statuses == {200: len(result.latencies)} and result.server_errors == 0
    assert result.wrong == 0 and len(result.latencies) >= benchmarks.SOAK_CLIENTS
