"""`ragstress run --chaos` against the reference stack behind the chaos proxy: the scenario's
429 brownout on the LLM happens in its window only, the gateway retries, opens its breaker and
falls back as its policy says, the run records the faults it played, and no fault is left on
the proxy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragstress.chaos.client import ChaosClient
from ragstress.cli import main
from ragstress.config.loader import load_profile
from ragstress.reference.stack import ReferenceStack, StackOptions
from ragstress.results.store import read_run
from tests.builders import REFERENCE_PROFILE, TEST_CORPUS, reference_data_dir

SCENARIO = """\
name: brownout
duration_s: 8
seed: 3
arrivals: {kind: poisson, rate: {kind: constant, rps: 5}}
requests:
  query_tokens: {kind: lognormal, mean: 12, cv: 0.3}
  top_k: 2
  chunk_tokens: {kind: deterministic, value: 64}
  output_tokens: {kind: deterministic, value: 4}
faults:
  - {kind: error, stage: generate, status: 429, retry_after_s: 0.05, percent: 100,
     start_s: 3, end_s: 5}
"""


@pytest.fixture
def stack_dir() -> Iterator[Path]:
    """A reference stack's data folder outside pytest's tmp_path (see reference_data_dir)."""
    with reference_data_dir() as path:
        yield path


def test_brownout_is_played_in_its_window_and_cleared(tmp_path: Path, stack_dir: Path) -> None:
    scenario = tmp_path / "brownout.yaml"
    scenario.write_text(SCENARIO)
    options = StackOptions(
        profile=load_profile(REFERENCE_PROFILE),
        data_dir=stack_dir,
        gateway_port=None,
        corpus=TEST_CORPUS,
        chaos=True,
    )
    with ReferenceStack(options) as stack:
        urls = stack.urls
        assert urls is not None
        assert urls.chaos_control is not None
        out = tmp_path / "run"
        result = CliRunner().invoke(
            main,
            [
                "run",
                str(scenario),
                "--target",
                urls.gateway,
                "--profile",
                str(REFERENCE_PROFILE),
                "--chaos",
                urls.chaos_control,
                "--out",
                str(out),
                "-q",
            ],
        )
        assert result.exit_code in (0, 3), result.output
        client = ChaosClient(urls.chaos_control)
        assert client.active() == []
        injected = client.counters()["injected"]
    run = read_run(out)
    req = run.requests
    arrival = req["arrival_s"]
    outcome = req["outcome"]
    # Calls are decided when the gateway sends them, a few ms after arrival: keep a margin.
    before = arrival < 2.8
    inside = (arrival >= 3.1) & (arrival < 4.8)
    after = arrival >= 5.5
    assert before.sum() >= 4
    assert inside.sum() >= 4
    assert after.sum() >= 4
    assert set(outcome[before]) == {"ok"}
    # In the window every generate attempt is refused with 429: openai-python's preset tries
    # up to 3 times (until the breaker opens), then the fallback (skip) answers: degraded.
    assert set(outcome[inside]) == {"ok_degraded"}
    # After 10 consecutive failures the breaker (fail_max 10, reset 10 s) stays open past the
    # end of the 8 s run: later requests are refused at once, without reaching the proxy, and
    # also answered by the fallback. The proxy injected nothing after the window.
    assert set(outcome[after]) == {"ok_degraded"}
    assert (req["attempts"][after] <= 3).all()  # one refused generate call, no retries
    generate_errors = injected["generate"]["error"]
    assert 10 <= generate_errors <= 3 * int(((arrival >= 3) & (arrival < 5)).sum())
    driver = json.loads((out / "driver.json").read_text())
    assert driver["chaos"] == urls.chaos_control
    assert driver["faults_loaded"] == 1
    assert driver["faults"][0]["start_s"] == 3
