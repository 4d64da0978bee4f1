"""The demo's loop, short, against the real reference stack: every output is written and
readable, and nothing the stack started is left running."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import yaml

from ragstress.config.loader import load_profile
from ragstress.demo import run_demo
from ragstress.demo.loop import TRACE_SCENARIO
from ragstress.results.store import read_run
from tests.builders import REFERENCE_PROFILE


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: pid → (parent pid, command line), from /proc."""
    out: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out[int(entry.name)] = (ppid, cmdline)
    return out


def _descendants(pid: int) -> set[int]:
    procs = _processes()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, (ppid, _) in procs.items() if ppid in frontier} - found
        found |= frontier
    return found


def _stack_processes() -> list[str]:
    """Command lines naming a demo stack's data folder."""
    marker = str(Path(tempfile.gettempdir()) / "ragstress-demo-stack-")
    return [cmd for _ppid, cmd in _processes().values() if marker in cmd]


def _leftovers(before: set[int], timeout_s: float = 10.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = _descendants(os.getpid()) - before
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _short_trace(folder: Path) -> Path:
    """The demo's trace scenario cut to 8 s (the trace file by absolute path)."""
    doc = yaml.safe_load(TRACE_SCENARIO.read_text(encoding="utf-8"))
    doc["duration_s"] = 8
    doc["warmup_s"] = 1
    doc["arrivals"]["file"] = str(TRACE_SCENARIO.parent / doc["arrivals"]["file"])
    path = folder / "trace.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def test_short_demo_writes_every_output_and_stops_the_stack(tmp_path: Path) -> None:
    before = _descendants(os.getpid())
    lines: list[str] = []
    out = tmp_path / "demo"
    result = run_demo(
        out,
        profile_path=REFERENCE_PROFILE,
        corpus_documents=40,
        low_rates=(2.0,),
        low_seconds_each=8,
        load_fractions=(0.3, 0.6),
        capacity_rps=7.0,
        seconds=8,
        min_level_requests=10,
        measure_capacity=False,
        brownout=True,
        brownout_seconds=10,
        brownout_window_s=3,
        trace=True,
        trace_scenario=_short_trace(tmp_path),
        progress=lines.append,
    )

    # progress: every step announced, with its number and the elapsed time
    for k in range(1, 9):
        assert any(line.startswith(f"[{k}/8] ") for line in lines), lines
    assert all(line.rstrip().endswith(" s)") for line in lines), lines

    assert result.capacity_rps == 7.0
    assert not result.capacity_estimated
    trace_rate = result.levels.pop("azure-conv")
    assert 0.5 < trace_rate < 3.0  # the trace's own pace over its first seconds
    assert result.levels == {"load-030": 2.1, "load-060": 4.2, "brownout": 5.6}  # 80 %
    load_profile(result.calibrated)
    for name in [*result.levels, "azure-conv"]:
        predicted = read_run(out / "predicted" / name)
        measured = read_run(out / "measured" / name)
        assert predicted.manifest.source == "simulated"
        assert measured.manifest.source != "simulated"
        assert len(predicted) == len(measured)  # the same workload on both sides
    doc = json.loads(result.validation_json.read_text())
    pairs = {pair["level"]: pair for pair in doc["pairs"]}
    assert set(pairs) == {*result.levels, "azure-conv"}
    for pair in pairs.values():
        assert pair["metrics"], pair
        numbers = [
            m["predicted"]
            for m in pair["metrics"].values()
            if isinstance(m.get("predicted"), (int, float)) and math.isfinite(m["predicted"])
        ]
        assert numbers, pair
    assert (out / "validation.html").is_file()
    assert "Maximum sustainable rate" in (out / "validation.md").read_text()
    capacity = json.loads((out / "capacity.json").read_text())
    assert capacity["predicted_rps"] == 7.0
    assert capacity["measured"] is None
    assert result.table.splitlines()[-1].startswith("validation ")
    assert isinstance(result.passed, bool)
    assert set(result.timings_s) >= {"start_stack", "calibrate", "load_levels", "validate"}

    # nothing the stack started is left
    assert _leftovers(before) == set()
    assert _stack_processes() == []
