"""``ragstress serve``: run the reference RAG stack until Ctrl-C, SIGTERM or a child's death."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from types import FrameType

import click

__all__ = ["serve"]

DEFAULT_REFERENCE_PROFILE = Path("profiles/reference.yaml")


def _default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("ragstress")) / "reference"


class _StopSignalError(Exception):
    """Raised from a signal handler to leave the wait loop (and any start in progress)."""


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _StopSignalError(signal.Signals(signum).name)


@click.command()
@click.option(
    "--profile",
    type=click.Path(path_type=Path),
    default=DEFAULT_REFERENCE_PROFILE,
    show_default=True,
    help="The stack's profile: embedder batching, pool size, LLM engine, client policies.",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Gateway port."
)
@click.option("--embed-port", type=click.IntRange(1, 65535), default=None, help="Embedder port.")
@click.option("--llm-port", type=click.IntRange(1, 65535), default=None, help="LLM service port.")
@click.option(
    "--pg-port", type=click.IntRange(1, 65535), default=None, help="Embedded PostgreSQL port."
)
@click.option(
    "--corpus-size",
    type=click.IntRange(1, 10_000_000),
    default=1000,
    show_default=True,
    help="Documents in the synthetic corpus (about 3.7 chunks each).",
)
@click.option(
    "--corpus-seed", type=click.IntRange(min=0), default=0, show_default=True, help="Corpus seed."
)
@click.option(
    "--chunk-tokens",
    type=click.IntRange(16, 2048),
    default=128,
    show_default=True,
    help="Chunk size in tokens (4 characters each).",
)
@click.option(
    "--pg-dsn",
    default=None,
    help="Use this PostgreSQL (with the pgvector extension) instead of the embedded one.",
)
@click.option(
    "--llm-url",
    default=None,
    help="Forward LLM calls to this OpenAI-compatible base URL (…/v1) instead of the "
    "built-in engine.",
)
@click.option(
    "--llm-api-key-env",
    default=None,
    help="Name of the environment variable holding the API key for --llm-url.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the embedded database, corpus and logs live "
    "[default: the user cache folder, …/ragstress/reference].",
)
@click.option(
    "--cpus",
    default=None,
    help="Pin every service to these CPUs (Linux), e.g. 1 or 2-3, leaving the others to the "
    "load generator.",
)
@click.option(
    "--embed-threads",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="onnxruntime threads of the embedder.",
)
@click.option(
    "--chaos",
    is_flag=True,
    help="Put the fault-injecting proxy between the gateway and its embedder and LLM "
    "(stages embed and generate), so `ragstress run --chaos URL` can play a scenario's faults.",
)
@click.option(
    "--chaos-control-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port of the proxy's control API [default: a free port].",
)
def serve(
    *,
    profile: Path,
    port: int,
    embed_port: int | None,
    llm_port: int | None,
    pg_port: int | None,
    corpus_size: int,
    corpus_seed: int,
    chunk_tokens: int,
    pg_dsn: str | None,
    llm_url: str | None,
    llm_api_key_env: str | None,
    data_dir: Path | None,
    cpus: str | None,
    embed_threads: int,
    chaos: bool,
    chaos_control_port: int | None,
) -> None:
    """Start the reference RAG stack: gateway, embedder, pgvector and an LLM endpoint.

    Waits until every service answers its health check, prints the URLs, and runs until
    Ctrl-C or SIGTERM, or until any service dies; then stops every service it started.
    The built-in LLM engine emulates a GPU server's timing and answers with filler text.
    """
    from ragstress.cli.main import UserError, _user_errors
    from ragstress.config.loader import load_profile
    from ragstress.reference.postgres import PostgresError
    from ragstress.reference.processes import ServiceError, parse_cpus
    from ragstress.reference.settings import CorpusSettings, ProfileMismatchError
    from ragstress.reference.stack import ReferenceStack, StackOptions

    with _user_errors():
        loaded = load_profile(profile)
    pinned = None
    if cpus is not None:
        try:
            pinned = parse_cpus(cpus)
        except ValueError as exc:
            raise UserError(f"--cpus {cpus}: {exc}") from None
    if llm_api_key_env is not None and llm_url is None:
        raise UserError("--llm-api-key-env: only with --llm-url")
    if chaos_control_port is not None and not chaos:
        raise UserError("--chaos-control-port: only with --chaos")
    options = StackOptions(
        profile=loaded,
        data_dir=data_dir or _default_data_dir(),
        gateway_port=port or None,
        embed_port=embed_port,
        llm_port=llm_port,
        pg_port=pg_port,
        pg_dsn=pg_dsn,
        llm_url=llm_url,
        llm_api_key_env=llm_api_key_env,
        corpus=CorpusSettings(documents=corpus_size, seed=corpus_seed, chunk_tokens=chunk_tokens),
        cpus=pinned,
        embed_threads=embed_threads,
        chaos=chaos,
        chaos_control_port=chaos_control_port,
    )

    def say(message: str) -> None:
        click.echo(message, err=True)

    stack = ReferenceStack(options, progress=say)
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    exit_code = 0
    try:
        urls = stack.start()
        report = stack.corpus_report
        if report is not None:
            what = "built" if report.built else "reused"
            say(
                f"corpus {what}: {report.documents} documents, {report.chunks} chunks "
                f"({report.seconds:.1f} s)"
            )
        say(f"ready in {stack.startup_seconds['total']:.1f} s (Ctrl-C stops everything)")
        for line in urls.lines():
            click.echo(line)
        sys.stdout.flush()
        while True:
            dead = stack.dead_child()
            if dead is not None:
                say(f"stopping: {dead}")
                exit_code = 1
                break
            time.sleep(0.2)
    except _StopSignalError as stop:
        say(f"{stop.args[0]}: stopping")
    except ProfileMismatchError as exc:
        raise UserError(f"--profile {profile}: {exc}") from None
    except (ServiceError, PostgresError) as exc:
        raise UserError(str(exc)) from None
    finally:
        # A second Ctrl-C during the shutdown must not leave children behind.
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        stack.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if exit_code:
        sys.exit(exit_code)
