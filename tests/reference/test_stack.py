"""The reference stack end to end: real PostgreSQL + pgvector, the real embedder, the built-in
LLM engine and the gateway, each its own process, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from ragstress.reference.corpus import ensure_corpus, iter_chunks
from ragstress.reference.processes import free_port
from ragstress.reference.settings import CorpusSettings
from ragstress.reference.stack import ReferenceStack
from tests.builders import REFERENCE_PROFILE, TEST_CORPUS, reference_data_dir


def _post(url: str, body: dict[str, Any], timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _server_timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        m = re.match(r"\s*([a-z_]+);.*dur=([0-9.]+)", part)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_json_answer_has_sources_from_the_corpus(reference_stack: ReferenceStack) -> None:
    urls = reference_stack.urls
    assert urls is not None
    status, headers, body = _post(
        f"{urls.gateway}/v1/rag", {"query": "Who approves large invoices?", "top_k": 3}
    )
    assert status == 200, body
    answer = json.loads(body)
    assert answer["outcome"] == "ok"
    assert len(answer["sources"]) == 3
    ids = [s["chunk_id"] for s in answer["sources"]]
    with psycopg.connect(urls.pg_dsn) as conn:
        rows = conn.execute("SELECT id, body FROM chunks WHERE id = ANY(%s)", (ids,)).fetchall()
    stored = dict(rows)
    assert set(stored) == set(ids)
    assert all(stored[s["chunk_id"]] == s["text"] for s in answer["sources"])
    assert answer["usage"]["completion_tokens"] >= 1
    assert answer["usage"]["prompt_tokens"] > 3 * TEST_CORPUS.chunk_tokens * 0.5
    timing = _server_timing(headers["Server-Timing"])
    stages = timing["embed"] + timing["retrieve"] + timing["generate"]
    assert stages <= timing["total"] + 0.01
    assert 0 < timing["ttft"] <= timing["total"]


def test_retrieval_finds_the_chunk_a_query_was_made_from(reference_stack: ReferenceStack) -> None:
    urls = reference_stack.urls
    assert urls is not None
    chunks = list(iter_chunks(TEST_CORPUS))
    found = 0
    probes = chunks[5::17][:8]
    for chunk in probes:
        query = " ".join(chunk.text.split()[:25])
        status, _, body = _post(
            f"{urls.gateway}/v1/rag", {"query": query, "top_k": 5, "max_tokens": 1}
        )
        assert status == 200, body
        ids = [s["chunk_id"] for s in json.loads(body)["sources"]]
        found += chunk.chunk_id in ids
    # A 25-word prefix of a chunk is its own nearest neighbour almost always; HNSW is
    # approximate, so allow one miss in eight.
    assert found >= len(probes) - 1, f"found {found} of {len(probes)}"


def test_stream_sends_first_token_well_before_the_last(reference_stack: ReferenceStack) -> None:
    urls = reference_stack.urls
    assert urls is not None
    req = urllib.request.Request(
        f"{urls.gateway}/v1/rag",
        data=json.dumps({"query": "shipping times", "stream": True, "max_tokens": 20}).encode(),
        headers={"content-type": "application/json"},
    )
    events: list[tuple[float, str, str]] = []
    event = "message"
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        for raw in resp:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                events.append((time.monotonic(), event, line[5:].strip()))
                event = "message"
    kinds = [e[1] for e in events]
    assert kinds[0] == "sources"
    assert kinds[-1] == "done"
    tokens = [e for e in events if e[1] == "token"]
    assert len(tokens) == 20
    # 20 tokens, one per engine step of at least base_s = 10 ms: ≥ 190 ms from first to last.
    assert tokens[-1][0] - tokens[0][0] > 0.15
    done = json.loads(events[-1][2])
    assert done["outcome"] == "ok"
    assert done["usage"]["completion_tokens"] == 20
    t = done["timings"]
    assert t["embed_ms"] + t["retrieve_ms"] + t["generate_ms"] <= t["total_ms"] + 0.01


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def test_metrics_count_requests_and_errors(reference_stack: ReferenceStack) -> None:
    urls = reference_stack.urls
    assert urls is not None

    def scrape() -> str:
        with urllib.request.urlopen(f"{urls.gateway}/metrics", timeout=10) as resp:
            return str(resp.read().decode())

    before = scrape()
    for _ in range(3):
        assert (
            _post(f"{urls.gateway}/v1/rag", {"query": "support hours", "max_tokens": 2})[0] == 200
        )
    status, _, body = _post(f"{urls.gateway}/v1/rag", {"query": ""})
    assert status == 400
    assert "query" in json.loads(body)["error"]["message"]
    after = scrape()
    name = "ragstress_gateway_requests_total"
    assert _metric(after, name, outcome="ok") - _metric(before, name, outcome="ok") == 3


def test_corpus_is_reused_and_rebuilt_when_its_settings_change(
    reference_stack: ReferenceStack,
) -> None:
    urls = reference_stack.urls
    assert urls is not None
    again = ensure_corpus(urls.pg_dsn, urls.embed, TEST_CORPUS)
    assert not again.built
    assert again.chunks == sum(1 for _ in iter_chunks(TEST_CORPUS))
    # A different corpus goes into another database of the same server, so the shared stack
    # keeps its own.
    with psycopg.connect(urls.pg_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS rebuild_check")
        conn.execute("CREATE DATABASE rebuild_check")
    other_dsn = urls.pg_dsn.rsplit("/", 1)[0] + "/rebuild_check"
    small = CorpusSettings(documents=3, seed=1, chunk_tokens=64)
    assert ensure_corpus(other_dsn, urls.embed, small).built
    assert not ensure_corpus(other_dsn, urls.embed, small).built
    changed = small.model_copy(update={"seed": 2})
    rebuilt = ensure_corpus(other_dsn, urls.embed, changed)
    assert rebuilt.built
    with psycopg.connect(other_dsn) as conn:
        titles = {r[0] for r in conn.execute("SELECT DISTINCT title FROM chunks").fetchall()}
    expected = {c.title for c in iter_chunks(changed)}
    assert titles == expected


# --- the `ragstress serve` command as a real process -----------------------------------------


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _start_serve(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ragstress.cli",
            "serve",
            "--profile",
            str(REFERENCE_PROFILE),
            "--port",
            str(port),
            "--corpus-size",
            "5",
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("postgres "):
            return proc, lines
    proc.kill()
    pytest.fail("ragstress serve did not print its URLs:\n" + "".join(lines))


def _ports(lines: list[str]) -> list[int]:
    return [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", "".join(lines))]


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_stopping_serve_leaves_no_process_and_no_port(how: str) -> None:
    with reference_data_dir() as data_dir:
        _stop_and_check(data_dir, how)


def _stop_and_check(data_dir: Path, how: str) -> None:
    port = free_port()
    proc, lines = _start_serve(data_dir, port)
    children: list[psutil.Process] = []
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 4  # embedder, llm, gateway, postgres (+ its workers)
        ports = set(_ports(lines))
        assert port in ports
        assert len(ports) == 4
        assert all(_listening(p) for p in ports)
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        else:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        _gone, alive = psutil.wait_procs(children, timeout=30)
        assert alive == [], f"left behind: {alive}"
        assert not any(_listening(p) for p in ports)
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in children:
            if child.is_running():
                child.kill()
