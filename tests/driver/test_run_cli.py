"""``ragstress run`` end to end: the CLI starts the Locust process against small local targets
(``tests.driver.targets``) or the reference stack, and the run folder says what was measured."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from click.testing import CliRunner, Result

from ragstress.cli import main
from ragstress.config.loader import load_profile
from ragstress.reference.stack import ReferenceStack, StackOptions
from ragstress.results.store import read_run, read_summary
from tests.builders import REFERENCE_PROFILE, TEST_CORPUS, reference_data_dir
from tests.driver.targets import Target, running_target

ROOT = Path(__file__).resolve().parents[2]
ID_TEMPLATE = '{"id": {{id}}, "query": "{{query}}", "max_tokens": {{max_tokens}}}'


@pytest.fixture(scope="module")
def server() -> Iterator[Target]:
    with running_target() as target:
        yield target


@pytest.fixture
def target(server: Target) -> Target:
    server.reset()
    return server


def scenario(
    folder: Path,
    *,
    duration_s: float,
    rate: float,
    kind: str = "poisson",
    slo: str = "",
    seed: int = 11,
) -> Path:
    path = folder / "scenario.yaml"
    text = (
        f"name: driver-test\nduration_s: {duration_s}\nseed: {seed}\n"
        f"arrivals: {{kind: {kind}, rate: {rate}}}\n"
        "requests:\n  output_tokens: {kind: deterministic, value: 5}\n"
    )
    if slo:
        text += f"slo:\n{slo}"
    path.write_text(text)
    return path


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["run", *(str(a) for a in args)], catch_exceptions=False)


def columns(out: Path) -> dict[str, np.ndarray]:
    return read_run(out).requests


def driver_record(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "driver.json").read_text())
    return data


# --- measuring ------------------------------------------------------------------------------


def test_known_delays_rate_and_send_lag(target: Target, tmp_path: Path) -> None:
    """50 req/s Poisson for 10 s at a 20 ms server: latencies are the delay, the generator
    keeps the schedule (rate, inter-arrival CV ≈ 1, small send lag), the SLO holds."""
    sc = scenario(tmp_path, duration_s=10, rate=50, slo="  latency_s: {p95: 1.0}\n")
    out = tmp_path / "run"
    res = invoke(
        sc, "--target", target.url, "--path", "/json?delay_ms=20", "--no-stream", "--out", out
    )
    assert res.exit_code == 0, res.output
    assert "latency_s.p95" in res.output
    assert "generator:" in res.output
    run = read_run(out)
    cols = run.requests
    n = len(run)
    assert 400 < n < 600
    assert run.manifest.source == "measured"
    assert run.manifest.complete
    assert set(cols["outcome"].tolist()) == {"ok"}
    assert target.requests == n

    latency, lag, arrival = cols["latency_s"], cols["send_lag_s"], cols["arrival_s"]
    service = latency - lag  # what the server and the network took
    assert float(service.min()) >= 0.020
    assert float(np.median(service)) < 0.020 + 0.004
    assert float(np.percentile(service, 95)) < 0.020 + 0.012
    assert float(np.percentile(lag, 99)) < 0.020
    assert float(lag.min()) >= 0.0  # never sent early

    sent = np.sort(arrival + lag)
    intended_rate = (n - 1) / float(arrival.max() - arrival.min())
    achieved_rate = (n - 1) / float(sent[-1] - sent[0])
    assert achieved_rate == pytest.approx(intended_rate, rel=0.02)
    gaps = np.diff(sent)
    assert 0.85 < float(gaps.std() / gaps.mean()) < 1.15  # Poisson: CV 1

    health = driver_record(out)
    assert health["achieved_ratio"] >= 0.98
    # (the p99-lag check's 2 ms floor at this rate is within reach of a busy 2-core test host)
    assert not [r for r in health["reasons"] if "lag" not in r], health["reasons"]
    assert health["workers"] == 1

    report = CliRunner().invoke(main, ["report", str(out)])
    assert report.exit_code == 0, report.output
    assert (out / "report.html").is_file()


def test_coordinated_omission_latency_counts_from_the_intended_time(
    target: Target, tmp_path: Path
) -> None:
    """The server stalls 2 s from request 30 on: every request due in the stall waits for its
    end, and its latency is counted from when it was due — the generator keeps sending."""
    sc = scenario(tmp_path, duration_s=4, rate=20, kind="constant")
    template = tmp_path / "body.json"
    template.write_text(ID_TEMPLATE)
    target.stall(from_id=30, seconds=2.0)
    out = tmp_path / "run"
    res = invoke(
        sc,
        "--target",
        target.url,
        "--endpoint-kind",
        "template",
        "--path",
        "/json?delay_ms=10",
        "--body-template",
        template,
        "--out",
        out,
        "-q",
    )
    assert res.exit_code == 0, res.output
    cols = columns(out)
    by_id = {int(i): k for k, i in enumerate(cols["id"])}
    arrival, latency, lag = cols["arrival_s"], cols["latency_s"], cols["send_lag_s"]
    start = float(arrival[by_id[30]] + lag[by_id[30]])  # the stall began when 30 arrived
    end = start + 2.0
    checked = 0
    for k in range(len(arrival)):
        due = float(arrival[k])
        if start + 0.03 < due < end - 0.03:
            expected = end - due + 0.010
            assert latency[k] == pytest.approx(expected, abs=0.05), (int(cols["id"][k]), due)
            checked += 1
    assert checked >= 35
    one_second_in = int(np.argmin(np.abs(arrival - (start + 1.0))))
    assert latency[one_second_in] == pytest.approx(1.0 + 0.010, abs=0.06)
    assert float(np.percentile(lag, 99)) < 0.020  # open loop: sends stayed on schedule
    assert sorted(target.ids) == sorted(int(i) for i in cols["id"])


def test_streaming_ttft_latency_and_a_missed_slo(target: Target, tmp_path: Path) -> None:
    """First token at 200 ms, last at 1 s: TTFT ≈ 0.2 s, latency ≈ 1 s; a latency SLO of
    0.5 s is missed (exit 3)."""
    sc = scenario(
        tmp_path, duration_s=1.5, rate=4, kind="constant", slo="  latency_s: {p95: 0.5}\n"
    )
    out = tmp_path / "run"
    res = invoke(
        sc,
        "--target",
        target.url,
        "--path",
        "/sse?first_ms=200&last_ms=1000&tokens=5",
        "--out",
        out,
    )
    assert res.exit_code == 3, res.output
    assert "MISSED" in res.output
    cols = columns(out)
    assert len(cols["id"]) == 6
    assert set(cols["outcome"].tolist()) == {"ok"}
    for ttft, latency in zip(cols["ttft_s"], cols["latency_s"], strict=True):
        assert ttft == pytest.approx(0.2, abs=0.05)
        assert latency == pytest.approx(1.0, abs=0.05)
    assert set(cols["tokens_out"].tolist()) == {5}
    assert cols["generate_service_s"] == pytest.approx(np.full(6, 1.0))


def test_a_cut_stream_is_error_stream(target: Target, tmp_path: Path) -> None:
    sc = scenario(tmp_path, duration_s=1, rate=4, kind="constant")
    out = tmp_path / "run"
    res = invoke(
        sc,
        "--target",
        target.url,
        "--path",
        "/sse?first_ms=50&last_ms=250&tokens=5&cut_after=2",
        "--out",
        out,
        "-q",
    )
    assert res.exit_code == 0, res.output
    cols = columns(out)
    assert len(cols["id"]) == 4
    assert set(cols["outcome"].tolist()) == {"error_stream"}
    assert np.all(cols["ttft_s"] == pytest.approx(0.05, abs=0.04))


def test_requests_beyond_max_in_flight_are_shed_and_counted(target: Target, tmp_path: Path) -> None:
    sc = scenario(tmp_path, duration_s=2, rate=20, kind="constant")
    out = tmp_path / "run"
    res = invoke(
        sc,
        "--target",
        target.url,
        "--path",
        "/json?delay_ms=500",
        "--no-stream",
        "--max-in-flight",
        "2",
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output
    assert "SUSPECT" in res.output
    cols = columns(out)
    outcomes = cols["outcome"].tolist()
    shed = outcomes.count("shed")
    assert len(outcomes) == 40
    assert 20 <= shed <= 36
    assert outcomes.count("ok") == 40 - shed == target.requests
    summary = read_summary(out)
    assert summary is not None
    assert summary["outcomes"]["shed"] == shed
    health = driver_record(out)
    assert health["suspect"] is True
    assert health["not_sent"] == shed
    shed_rows = cols["outcome"] == "shed"
    assert np.all(np.isnan(cols["latency_s"][shed_rows]))


# --- stopping -------------------------------------------------------------------------------


def _generators(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if "ragstress.driver.locust_process" in cmdline and marker in cmdline:
            found.append(proc)
    return found


def _interrupt(target: Target, tmp_path: Path, signals: int) -> tuple[Path, str, str, int]:
    """Start ``ragstress run`` as a process, send it ``signals`` SIGINTs once requests were
    answered; (run folder, stdout, stderr, exit code)."""
    sc = scenario(tmp_path, duration_s=30, rate=20)
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "ragstress.cli",
        "run",
        str(sc),
        "--target",
        target.url,
        "--path",
        "/json?delay_ms=300",
        "--no-stream",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # progress lines: wait until requests were answered
            fields = line.split()
            if "done" in fields and int(fields[fields.index("done") + 1]) > 5:
                break
        for _ in range(signals):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.1)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not _generators(str(out))
    return out, stdout, stderr, proc.returncode


def test_sigint_writes_a_partial_run_and_exits_130(target: Target, tmp_path: Path) -> None:
    out, stdout, stderr, code = _interrupt(target, tmp_path, signals=1)
    assert code == 130, stderr
    assert "run INCOMPLETE" in stdout
    run = read_run(out)
    assert run.manifest.complete is False
    assert 5 < len(run) < 500
    assert set(run.requests["outcome"].tolist()) == {"ok"}  # abandoned requests are absent
    assert any("stopped early" in note for note in run.manifest.notes)
    assert driver_record(out)["achieved_ratio"] > 0.98  # judged up to the stop


def test_a_second_sigint_kills_the_generator_and_keeps_its_samples(
    target: Target, tmp_path: Path
) -> None:
    out, _stdout, stderr, code = _interrupt(target, tmp_path, signals=2)
    assert code == 130, stderr
    assert "killing the load generator" in stderr
    run = read_run(out)
    assert run.manifest.complete is False
    assert len(run) > 5
    assert any("ended without finishing" in note for note in run.manifest.notes)


# --- flags ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--endpoint-kind", "grpc"], "--endpoint-kind grpc: allowed: rag, openai-chat, template"),
        (["--header", "no colon"], "--header no colon: allowed: 'Name: value'"),
        (["--header-env", "Authorization=RAGSTRESS_TEST_UNSET_VAR"], "is not set"),
        (["--endpoint-kind", "template"], "--path: required with --endpoint-kind template"),
        (["--timeout", "0"], "--timeout 0: allowed"),
        (["--time-scale", "-1"], "--time-scale -1.0: allowed"),
        (["--max-in-flight", "0"], "--max-in-flight 0: allowed"),
        (["--workers", "0"], "--workers 0: allowed"),
        (["--master", "--worker"], "--master and --worker"),
        (["--worker"], "--worker: needs --master-host"),
        (["--master-host", "h"], "--master-host: only with --worker"),
    ],
)
def test_bad_flags_are_one_line_errors(
    tmp_path: Path, extra: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAGSTRESS_TEST_UNSET_VAR", raising=False)
    sc = scenario(tmp_path, duration_s=1, rate=1)
    res = CliRunner().invoke(main, ["run", str(sc), "--target", "http://127.0.0.1:9", *extra])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_bad_target_template_and_files_are_reported_before_any_run(tmp_path: Path) -> None:
    sc = scenario(tmp_path, duration_s=1, rate=1)
    res = CliRunner().invoke(main, ["run", str(sc), "--target", "ftp://x"])
    assert res.exit_code == 2
    assert res.output.startswith("--target ftp://x: allowed: an http:// or https:// URL")

    template = tmp_path / "body.json"
    template.write_text('{"query": {{query}}}')  # unquoted string placeholder
    res = CliRunner().invoke(
        main,
        [
            "run",
            str(sc),
            "--target",
            "http://127.0.0.1:9",
            "--endpoint-kind",
            "template",
            "--path",
            "/x",
            "--body-template",
            str(template),
        ],
    )
    assert res.exit_code == 2
    assert f"--body-template {template}: body_template is not valid JSON" in res.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nduration_s: -1\narrivals: {kind: poisson, rate: 1}\n")
    res = CliRunner().invoke(main, ["run", str(bad), "--target", "http://127.0.0.1:9"])
    assert res.exit_code == 2
    assert f"{bad}:2" in res.output


# --- the reference stack --------------------------------------------------------------------


@pytest.fixture
def stack_dir() -> Iterator[Path]:
    """A reference stack's data folder outside pytest's tmp_path (see reference_data_dir)."""
    with reference_data_dir() as path:
        yield path


def test_run_against_the_reference_stack(tmp_path: Path, stack_dir: Path) -> None:
    options = StackOptions(
        profile=load_profile(REFERENCE_PROFILE),
        data_dir=stack_dir,
        gateway_port=None,
        corpus=TEST_CORPUS,
        startup_timeout_s=90,
    )
    sc = scenario(tmp_path, duration_s=5, rate=3, seed=3)
    out = tmp_path / "run"
    with ReferenceStack(options) as stack:
        assert stack.urls is not None
        res = invoke(
            sc, "--target", stack.urls.gateway, "--profile", REFERENCE_PROFILE, "--out", out
        )
    assert res.exit_code == 0, res.output
    run = read_run(out)
    cols = run.requests
    assert len(run) >= 5
    assert set(cols["outcome"].tolist()) == {"ok"}
    for stage in ("embed", "retrieve", "generate"):
        assert np.all(cols[f"{stage}_service_s"] > 0), stage
    assert np.all(cols["ttft_s"] < cols["latency_s"])
    assert np.all(cols["tokens_out"] == 5)
    assert run.manifest.profile is not None
    assert not math.isnan(float(cols["cost_usd"].sum()))
    assert (out / "driver.json").is_file()
