"""The replay plan: the scenario's workload as requests to send, on the run's (scaled) clock.

The driver replays the *same* requests the model simulates: the workload is rebuilt here with
:func:`ragstress.workload.build_workload` from the scenario and seed, so a prediction and a
measurement describe the same arrivals, query sizes and answer lengths, request by request
(``id`` is the workload's index in both). Each process (the CLI, the Locust master, every
worker) rebuilds the plan from the same files and settings instead of shipping it around:
the workload is deterministic, and the settings are all a remote worker needs.

``time_scale`` divides every arrival time and the duration (4: the same requests four times as
fast). ``max_requests`` keeps the first requests in arrival order, a guard against a scenario
far bigger than meant; the plan says when it cut anything.

This module never imports Locust or gevent (see :mod:`ragstress.driver.spec`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ragstress.config.loader import ConfigError, load_profile, load_scenario
from ragstress.config.profile import LlmApiStage, LlmEngineStage, Profile
from ragstress.config.scenario import Scenario
from ragstress.driver.spec import ReplayRequest, RunSettings
from ragstress.workload import build_workload

__all__ = [
    "RAG_STAGES",
    "ReplayPlan",
    "answer_stage",
    "build_replay",
    "load_run_inputs",
    "system_prompt_tokens",
]

# The stages the reference gateway reports in ``Server-Timing`` (and its ``done`` event): the
# columns a measured ``rag`` run has when no profile names its stages.
RAG_STAGES: tuple[str, ...] = ("embed", "retrieve", "generate")


@dataclass(frozen=True)
class ReplayPlan:
    """The requests one run sends, sorted by intended send time ``at_s``.

    ``duration_s``: the scenario's duration divided by ``time_scale`` (the run's window).
    ``truncated``: ``max_requests`` cut requests off the end of the workload.
    ``workload_truncated``: the scenario's own ``max_requests`` did (as in the model).
    ``stages``: the per-stage columns of the run's results: the profile's stage names, or
    :data:`RAG_STAGES` for a ``rag`` endpoint without a profile (what its ``Server-Timing``
    reports), else none.
    ``workload_requests``: requests in the workload before ``max_requests`` cut.
    """

    requests: tuple[ReplayRequest, ...]
    duration_s: float
    truncated: bool
    stages: tuple[str, ...]
    scenario: Scenario
    profile: Profile | None
    seed: int
    time_scale: float = 1.0
    workload_truncated: bool = False
    workload_requests: int = 0

    def __len__(self) -> int:
        return len(self.requests)

    def share(self, worker_index: int, workers: int) -> tuple[ReplayRequest, ...]:
        """Worker ``worker_index`` of ``workers``: the requests with ``id % workers ==
        worker_index``, in send order. The shares of 0..workers-1 partition the plan, and
        each share keeps the scenario's arrival pattern thinned evenly (ids are in arrival
        order), so every worker offers the same load shape."""
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if not 0 <= worker_index < workers:
            raise ValueError(f"worker_index must be in 0..{workers - 1}, got {worker_index}")
        if workers == 1:
            return self.requests
        return tuple(r for r in self.requests if r.id % workers == worker_index)


def answer_stage(profile: Profile | None) -> LlmApiStage | LlmEngineStage | None:
    """The stage that writes the answer, as the model sees it: the last LLM stage
    (``llm_api`` or ``llm_engine``) on the main path; None without one (or without a profile).
    Its ``system_prompt_tokens`` are part of every prompt and its prices bill the answer."""
    if profile is None:
        return None
    found: LlmApiStage | LlmEngineStage | None = None
    for stage in profile.path:
        if isinstance(stage, LlmApiStage | LlmEngineStage):
            found = stage
    return found


def system_prompt_tokens(profile: Profile | None) -> int:
    """The answering LLM's system prompt size (0 without a profile or an LLM stage)."""
    stage = answer_stage(profile)
    return 0 if stage is None else stage.system_prompt_tokens


def build_replay(settings: RunSettings, scenario: Scenario, profile: Profile | None) -> ReplayPlan:
    """The run's requests: the model's workload for ``scenario`` and the settings' seed, cut at
    ``settings.max_requests``, arrival times divided by ``settings.time_scale``.

    Per request: the query text of :meth:`Workload.query_text` (the same text for repeated
    query ids), ``prompt_tokens`` = the answering LLM's system prompt + query + retrieved
    context (:meth:`Workload.prompt_tokens`), ``max_tokens`` = the workload's answer length.
    """
    workload = build_workload(scenario, settings.seed)
    scale = settings.time_scale
    n_all = len(workload)
    n = min(n_all, settings.max_requests)
    prompts = workload.prompt_tokens(system_prompt_tokens(profile))[:n].tolist()
    arrivals = workload.arrival_s[:n].tolist()
    query_ids = workload.query_id[:n].tolist()
    query_tokens = workload.query_tokens[:n].tolist()
    top_k = workload.top_k[:n].tolist()
    output_tokens = workload.output_tokens[:n].tolist()
    texts: dict[int, str] = {}  # a repeated query id has the same text: make it once
    requests: list[ReplayRequest] = []
    for i in range(n):
        qid = int(query_ids[i])
        text = texts.get(qid)
        if text is None:
            text = texts[qid] = workload.query_text(i)
        requests.append(
            ReplayRequest(
                id=i,
                at_s=float(arrivals[i]) / scale,
                query=text,
                top_k=int(top_k[i]),
                query_tokens=int(query_tokens[i]),
                prompt_tokens=int(prompts[i]),
                max_tokens=int(output_tokens[i]),
            )
        )
    requests.sort(key=lambda r: (r.at_s, r.id))  # arrivals are sorted already; ties by id
    if profile is not None:
        stages = tuple(s.name for s in profile.stages)
    elif settings.endpoint.kind == "rag":
        stages = RAG_STAGES
    else:
        stages = ()
    return ReplayPlan(
        requests=tuple(requests),
        duration_s=scenario.duration_s / scale,
        truncated=n < n_all,
        stages=stages,
        scenario=scenario,
        profile=profile,
        seed=workload.seed,
        time_scale=scale,
        workload_truncated=workload.truncated,
        workload_requests=n_all,
    )


def load_run_inputs(settings: RunSettings) -> tuple[Scenario, Profile | None]:
    """Load the settings' scenario and (optional) profile files. Raises ConfigError with one
    ``file:line: key: what`` line per problem, the problems of both files together, so one
    attempt shows everything to fix."""
    problems: list[str] = []
    scenario: Scenario | None = None
    profile: Profile | None = None
    try:
        scenario = load_scenario(settings.scenario)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if settings.profile is not None:
        try:
            profile = load_profile(settings.profile)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems or scenario is None:
        raise ConfigError(problems)
    return scenario, profile
