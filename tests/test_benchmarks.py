"""The benchmark script runs end to end on tiny shapes (`--smoke`) and reports every case; CI runs only this."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


def test_smoke_run_reports_every_case(tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--json", str(out)],
        capture_output=True, text=True, env=subprocess_env(), timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert {"cpu", "cpus", "memory", "torch", "torch_threads"} <= set(data["machine"])
    cases = [figure["case"] for figure in data["figures"]]
    for prefix in ("1. seed sentence", "2. long input", "3. throughput", "4. CLI cold start", "4. minimal script",
                   "4. cold analyze / minimal script", "4. --help", "5. peak RSS",
                   "floor: forward pass", "floor: GEMM", "floor: total", "naive loop", "7. corpus mode",
                   "8. head lens, seed sentence", "8. head lens, long input", "9. baselines, seed sentence",
                   "9. baselines, long input", "11. attribution, seed sentence", "12. learned lens, all-MiniLM-L6-v2",
                   "7b. corpus mode, --attribution"):
        assert any(case.startswith(prefix) for case in cases), prefix
    assert all(figure["value"] > 0 for figure in data["figures"] if not {"above", "add", "adds"} & set(figure["case"].split()))
    for reference in ("word", "embedding"):
        assert any(case.endswith(f"{reference}: analysis / floor") for case in cases)
        assert any(case.endswith(f"{reference}: speed-up over naive") for case in cases)
    assert {t["target"] for t in data["targets"]} >= {"analysis / floor, word", "analysis / floor, embedding"}
    assert "| target | measured | goal | met |" in done.stdout
    web = [case for case in cases if case.startswith("6. web API latency")]
    if importlib.util.find_spec("attention_encodings.faces.server") is None:
        assert "server not available" in done.stdout and not web
    else:
        assert len(web) == 3 and any(case.endswith("p95") for case in web)
