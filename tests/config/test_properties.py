"""Property tests for the YAML loaders.

(a) a valid document dumped to YAML loads back to exactly the model pydantic builds from it;
(b) a randomly damaged document either loads or raises ConfigError whose every line has the
    ``file:LINE: key: message`` shape with a line inside the file, never anything else;
(c) arbitrary text never raises anything but ConfigError.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragstress.config import ConfigError, Profile, Scenario, parse_config

PROBLEM = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<key>.+?): (?P<msg>.+)$")
SOURCE = "gen/config.yaml"
MODELS: list[type[Profile] | type[Scenario]] = [Profile, Scenario]

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- valid documents -----------------------------------------------------------------------

positive = st.floats(min_value=1e-6, max_value=1e4, allow_nan=False, allow_infinity=False)
non_negative = st.one_of(st.just(0.0), positive)
count = st.integers(min_value=1, max_value=1000)


exponential = st.fixed_dictionaries({"kind": st.just("exponential"), "mean": positive})
deterministic = st.fixed_dictionaries({"kind": st.just("deterministic"), "value": non_negative})
gamma = st.fixed_dictionaries({"kind": st.just("gamma"), "mean": positive, "cv": positive})
lognormal_cv = st.fixed_dictionaries(
    {"kind": st.just("lognormal"), "mean": positive, "cv": st.floats(0.01, 5.0)}
)
lognormal_p99 = st.builds(
    lambda mean, factor: {"kind": "lognormal", "mean": mean, "p99": mean * factor},
    positive,
    st.floats(1.01, 14.0),  # a log-normal's p99 is at most exp(z₀.₉₉²/2) ≈ 14.97 × its mean
)


@st.composite
def empirical(draw: st.DrawFn) -> dict[str, Any]:
    values = draw(st.lists(non_negative, min_size=1, max_size=8))
    out: dict[str, Any] = {"kind": "empirical", "values": values}
    if draw(st.booleans()):
        weights = draw(st.lists(positive, min_size=len(values), max_size=len(values)))
        out["weights"] = weights
    return out


distribution = st.one_of(
    exponential, deterministic, gamma, lognormal_cv, lognormal_p99, empirical()
)

price = st.fixed_dictionaries(
    {},
    optional={
        "per_call_usd": non_negative,
        "per_1m_input_tokens_usd": non_negative,
        "per_1m_output_tokens_usd": non_negative,
        "per_replica_hour_usd": non_negative,
    },
)
queue_limit = st.one_of(st.none(), st.integers(min_value=0, max_value=10_000))
stage_name = st.from_regex(r"[a-z][a-z0-9_]{0,39}", fullmatch=True)
text = st.text(max_size=30)


def pool_stage(name: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"kind": st.just("pool"), "name": st.just(name), "service": distribution},
        optional={
            "replicas": count,
            "concurrency": count,
            "queue_limit": queue_limit,
            "per_token_s": non_negative,
            "input_tokens": st.sampled_from(["none", "query", "context", "prompt"]),
            "price": price,
        },
    )


def llm_stage(name: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "kind": st.just("llm_api"),
            "name": st.just(name),
            "concurrency": count,
            "ttft": distribution,
            "time_per_output_token_s": positive,
        },
        optional={
            "model": text,
            "queue_limit": queue_limit,
            "prefill_per_token_s": non_negative,
            "system_prompt_tokens": st.integers(min_value=0, max_value=100_000),
            "price": price,
        },
    )


@st.composite
def profile_doc(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(stage_name, min_size=1, max_size=5, unique=True))
    stages = [draw(st.one_of(pool_stage(n), llm_stage(n))) for n in names]
    doc: dict[str, Any] = {"name": draw(st.text(min_size=1, max_size=30)), "stages": stages}
    if draw(st.booleans()):
        doc["description"] = draw(text)
    return doc


rate = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)
constant_rate = st.fixed_dictionaries({"kind": st.just("constant"), "rps": rate})
ramp_rate = st.fixed_dictionaries(
    {"kind": st.just("ramp"), "from_rps": rate, "to_rps": rate},
    optional={"duration_s": positive},
)
step_rate = st.lists(positive, max_size=4, unique=True).flatmap(
    lambda starts: st.fixed_dictionaries(
        {
            "kind": st.just("step"),
            "steps": st.tuples(*[st.just(t) for t in [0.0, *sorted(starts)]]).flatmap(
                lambda ts: st.tuples(
                    *[st.fixed_dictionaries({"at_s": st.just(t), "rps": rate}) for t in ts]
                ).map(list)
            ),
        }
    )
)
spike_rate = st.fixed_dictionaries(
    {
        "kind": st.just("spike"),
        "base_rps": rate,
        "peak_rps": rate,
        "start_s": non_negative,
        "duration_s": positive,
    },
    optional={"ramp_s": non_negative},
)
diurnal_rate = st.fixed_dictionaries(
    {"kind": st.just("diurnal"), "mean_rps": rate, "amplitude": st.floats(0.0, 1.0)},
    optional={"period_s": positive, "peak_at_s": non_negative},
)
simple_shape = st.one_of(constant_rate, ramp_rate, step_rate, spike_rate, diurnal_rate)
phases_rate = st.fixed_dictionaries(
    {
        "kind": st.just("phases"),
        "phases": st.lists(
            st.fixed_dictionaries({"duration_s": positive, "shape": simple_shape}),
            min_size=1,
            max_size=3,
        ),
    }
)
rate_or_shorthand = st.one_of(
    rate, st.integers(min_value=0, max_value=10_000), simple_shape, phases_rate
)
arrivals = st.one_of(
    st.fixed_dictionaries(
        {"kind": st.sampled_from(["poisson", "constant"]), "rate": rate_or_shorthand}
    ),
    st.fixed_dictionaries(
        {"kind": st.just("gamma"), "rate": rate_or_shorthand, "cv": st.floats(0.01, 20.0)}
    ),
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "query_tokens": distribution,
        "top_k": st.integers(min_value=0, max_value=1000),
        "chunk_tokens": distribution,
        "output_tokens": distribution,
        "distinct_queries": st.one_of(st.none(), count),
        "zipf_s": st.floats(0.01, 5.0),
        "locale": st.sampled_from(["en_US", "de_DE"]),
    },
)
percentiles = st.fixed_dictionaries(
    {}, optional={"p50": positive, "p90": positive, "p95": positive, "p99": positive}
)
slo = st.fixed_dictionaries(
    {},
    optional={
        "latency_s": st.one_of(st.none(), percentiles),
        "ttft_s": percentiles,
        "error_rate": st.floats(0.0, 1.0),
    },
)


@st.composite
def scenario_doc(draw: st.DrawFn) -> dict[str, Any]:
    duration = draw(st.floats(min_value=1.0, max_value=30 * 86_400.0))
    doc: dict[str, Any] = {
        "name": draw(st.text(min_size=1, max_size=30)),
        "duration_s": duration,
        "arrivals": draw(arrivals),
    }
    optional = {
        "description": text,
        "seed": st.integers(min_value=0, max_value=2**63 - 1),
        "warmup_s": st.floats(min_value=0.0, max_value=duration * 0.99),
        "max_requests": st.integers(min_value=1, max_value=50_000_000),
        "requests": requests,
        "slo": slo,
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            doc[key] = draw(strategy)
    return doc


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


@SETTINGS
@given(profile_doc())
def test_valid_profile_round_trips(doc: dict[str, Any]) -> None:
    loaded = parse_config(dump(doc), Profile, SOURCE)
    assert loaded == Profile.model_validate(doc)


@SETTINGS
@given(scenario_doc())
def test_valid_scenario_round_trips(doc: dict[str, Any]) -> None:
    loaded = parse_config(dump(doc), Scenario, SOURCE)
    assert loaded == Scenario.model_validate(doc)


# --- damaged documents ---------------------------------------------------------------------

Path_ = tuple[str | int, ...]


def _walk(node: Any, path: Path_ = ()) -> list[tuple[Path_, Any]]:
    out = [(path, node)]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _walk(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _walk(v, (*path, i))
    return out


def _get(doc: Any, path: Path_) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _copy(doc: Any) -> Any:
    return yaml.safe_load(dump(doc))


def problems_of(text: str, model: type[Profile] | type[Scenario]) -> list[str] | None:
    """None when the text loads; the problems when it raises ConfigError; any other exception
    propagates and fails the test."""
    try:
        parse_config(text, model, SOURCE)
    except ConfigError as exc:
        return exc.problems
    return None


def check_problems(text: str, problems: list[str]) -> None:
    assert problems
    n_lines = max(1, len(text.splitlines()))
    for problem in problems:
        assert "\n" not in problem, problem
        m = PROBLEM.match(problem)
        assert m is not None, problem
        assert m["file"] == SOURCE, problem
        assert 1 <= int(m["line"]) <= n_lines, (problem, text)


unknown_key = st.from_regex(r"zz_[a-z0-9_]{1,10}", fullmatch=True)
scalar = st.one_of(st.integers(-5, 5), st.floats(allow_nan=False), text, st.booleans(), st.none())


@st.composite
def damaged(draw: st.DrawFn) -> tuple[type[Profile] | type[Scenario], Any, str, str | None]:
    """A valid document with one thing broken: (model, document, what was done, inserted key)."""
    model = draw(st.sampled_from(MODELS))
    doc = _copy(draw(profile_doc() if model is Profile else scenario_doc()))
    nodes = _walk(doc)
    mappings = [p for p, n in nodes if isinstance(n, dict) and n]
    numbers = [p for p, n in nodes if isinstance(n, int | float) and not isinstance(n, bool) and p]
    choices = ["delete", "insert"] + (["negative", "string"] if numbers else [])
    action = draw(st.sampled_from(choices))
    inserted: str | None = None
    if action == "delete":
        at = draw(st.sampled_from(mappings))
        target = _get(doc, at)
        del target[draw(st.sampled_from(sorted(target)))]
    elif action == "insert":
        at = draw(st.sampled_from(mappings))
        inserted = draw(unknown_key)
        _get(doc, at)[inserted] = draw(scalar)
    else:
        at = draw(st.sampled_from(numbers))
        parent, last = _get(doc, at[:-1]), at[-1]
        if action == "negative":
            parent[last] = draw(st.one_of(st.integers(max_value=-1), st.floats(max_value=-1e-9)))
        else:
            parent[last] = draw(st.one_of(text, st.sampled_from(["abc", "1e", "-", ""])))
    return model, doc, action, inserted


@SETTINGS
@given(damaged())
def test_damaged_document_fails_cleanly(
    case: tuple[type[Profile] | type[Scenario], Any, str, str | None],
) -> None:
    model, doc, _action, inserted = case
    text = dump(doc)
    problems = problems_of(text, model)
    if problems is None:
        assert inserted is None, "an unknown key was accepted"
        return
    check_problems(text, problems)
    if inserted is not None:
        # the unknown key is reported on the very line it is written on, with allowed keys
        line = 1 + next(i for i, t in enumerate(text.splitlines()) if f"{inserted}:" in t)
        matches = [m for m in map(PROBLEM.match, problems) if m is not None]
        ours = [m for m in matches if m["key"].endswith(inserted)]
        assert len(ours) == 1, problems
        assert int(ours[0]["line"]) == line, (ours[0][0], text)
        assert "unknown key (allowed: " in ours[0]["msg"]


# --- arbitrary text ------------------------------------------------------------------------

# YAML punctuation and a few words, so the text is often nearly YAML and reaches the loader
yamlish = st.lists(
    st.sampled_from(
        [
            *":-[]{},#&*!|>'\"%@`?~._0123456789 \n\t\r",
            *["a", "b", "e", "kind", "name", "stages", "<<", "&a ", "*a", "0b", "0x"],
            *["!!", "!!int ", "!!float ", "!!bool ", "!!timestamp ", "2024-13-45"],
        ]
    ),
    max_size=60,
).map("".join)


@SETTINGS
@given(st.one_of(st.text(), yamlish), st.sampled_from(MODELS))
def test_arbitrary_text_only_raises_config_error(
    text_: str, model: type[Profile] | type[Scenario]
) -> None:
    problems = problems_of(text_, model)
    for problem in problems or []:
        assert PROBLEM.match(problem), problem
        assert "\n" not in problem, problem
