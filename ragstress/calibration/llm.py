"""Fitting the answering LLM stage from its answers' timing: ``llm_engine`` and ``llm_api``.

Pure: :class:`~ragstress.calibration.observe.StageRun` views in, a
:class:`~ragstress.calibration.common.StageFit` out. Only the *answering* LLM stage (the last
LLM stage on the main path) can be fitted this way: a row's ``ttft_s``, ``latency_s``,
``tokens_in`` and ``tokens_out`` are its answer's.

What a row shows
================

For request i (times on the run's clock): its answer ends at ``end = arrival + latency_s``
(the answering stage is assumed to be the last on the path; later stages' times are taken
off), its first token came at ``ft = arrival + ttft_s``, and the stage was called at
``start = end − stage time``. In a simulated run the engine admitted it at ``start +
<stage>_wait_s``; in a measured one the admission is not seen and ``start`` stands for it.
Its answer's ``N = tokens_out`` tokens make a first token and ``N − 1`` decode steps in the
window ``(ft, end]``.

llm_engine
==========

An engine's step takes ``base_s + per_prefill_token_s·P + per_decode_seq_s·D +
per_context_token_s·K`` (:mod:`ragstress.model.llm_engine`), and all running sequences share
each step. So the mean step over i's decode window is

    τᵢ = (end − ft) / (N − 1) = base_s + per_decode_seq_s·D̄ᵢ + per_prefill_token_s·P̄ᵢ
         + per_context_token_s·K̄ᵢ

where D̄ᵢ is the mean number of sequences decoding during the window (i itself and every
request whose own decode window ``(ftⱼ, endⱼ]`` overlaps it, time-weighted), P̄ᵢ the prompt
tokens other requests prefilled in it per step (each request's prompt spread evenly over
its admission-to-first-token interval), K̄ᵢ the mean tokens held by the decoding sequences
(prompt + half the answer). All three come from the rows of every request of the run that
reached the engine, in or out of the measurement window, answered or not, so they count the
engine's real company. Runs at a few loads spread D̄ so that ``base_s`` and
``per_decode_seq_s`` separate: a weighted least-squares line of ``τ − per_prefill_token_s·P̄
− per_context_token_s·K̄`` on D̄ (weights N − 1: a long answer averages over more steps).
D̄ and P̄ are approximations: time-weighting D̄ over-weights busy steps (they last
longer), and a prompt's prefill is spread evenly rather than put in its steps. On runs
simulated with known steps (``tests/calibration``) they cost about 2 % on
``per_decode_seq_s`` and 0.1 % on ``base_s`` — more than the fit's standard errors, which
count only the requests' scatter around the line. Read those intervals as precision, not
accuracy. With several ``replicas`` the rows do not say which replica served a request:
see :func:`engine_rows`.

The first token takes the wait for the step in progress, then ⌈P / (max_batched_tokens −
D₀)⌉ prefill steps (chunked prefill; D₀ decoding at admission), so the engine's TTFT is
``n_prefill·(base_s + per_decode_seq_s·D₀) + per_prefill_token_s·P + c``: a line in the
prompt size P whose slope is ``per_prefill_token_s`` — fitted when the prompts vary enough
and the slope is significant (:func:`~ragstress.calibration.common.choose_slope`), else the
profile's value is kept. Its intercept c (the wait for the step in progress and, measured,
the HTTP hop) is reported. The two lines are fitted in turn, three times (each uses the
other's estimates; they settle at once).

The stage's ``call_overhead`` (the caller's request building, the HTTP hop and the relay
of the first token: time outside the engine that the model adds before the call arrives)
is what a call's time to first token *from its send* has beyond the engine's part. The send
is taken at the request's arrival plus its earlier stages' times (not at its end less the
stage's time), so the caller's own time between stages — a gateway parsing the request,
building the prompt, relaying — which belongs to no stage, lands here, before the first
token, where the model can hold it. For a call that found the engine idle (no other call in
the stage) that part is exactly its prefill steps, ``n_prefill·base_s +
per_prefill_token_s·P``, so those calls give the overhead's mean (with its interval) and
spread directly. With fewer than
``MIN_IDLE_CALLS`` of them, every call is used and the step in progress is taken off as
half a step when the engine was busy (uniform over a step: its variance is taken off the
spread too) — approximate, since steps carrying other calls' prefill are longer. The fit is
a gamma with that mean and variance, deterministic when the spread is small, and no
overhead when the mean is not significantly above 0. From the send, so it is the same
with or without the wait column: a simulated run's wait holds the overhead and the
residual step together.

llm_api
=======

A hosted API's time to first token (stage time − (latency − ttft)) is ``ttft`` +
``prefill_per_token_s`` × prompt tokens: the slope as above, then ``ttft``'s distribution
from what remains. ``time_per_output_token_s`` is Σ(latency − ttft) / Σ(N − 1), the
weighted mean of each answer's token gap. The model's API has no batch effect; a token gap
that rises with the calls in flight is reported as a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from ragstress.calibration.common import (
    KeyFit,
    Options,
    StageFit,
    choose_slope,
    runs_text,
)
from ragstress.calibration.fit import LinearFit, fit_distribution, fit_linear, sig
from ragstress.calibration.observe import (
    StageRun,
    free_on_arrival,
    in_flight_at,
    load_warnings,
)
from ragstress.calibration.stages import compact, refused
from ragstress.config.profile import LlmApiStage, LlmEngineStage

__all__ = ["MIN_DECODE_SPREAD", "EngineRows", "engine_rows", "fit_llm_api", "fit_llm_engine"]

# D̄ must vary by at least this much (standard deviation, in sequences) across requests for
# per_decode_seq_s to be fitted; otherwise the profile's value is kept.
MIN_DECODE_SPREAD = 0.5
# the call overhead is read from calls that found the engine idle when there are this many
MIN_IDLE_CALLS = 10
_ROUNDS = 3


def _integral(
    starts: np.ndarray, ends: np.ndarray, weights: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """t ↦ ∫₀ᵗ Σⱼ wⱼ·1[sⱼ ≤ u < eⱼ] du, exact for these piecewise-constant sums."""
    ok = np.isfinite(starts) & np.isfinite(ends) & (ends > starts)
    times = np.concatenate([starts[ok], ends[ok]])
    if times.size == 0:
        return lambda t: np.zeros(np.shape(t))
    deltas = np.concatenate([weights[ok], -weights[ok]])
    order = np.argsort(times, kind="stable")
    times = times[order]
    level = np.cumsum(deltas[order])
    area = np.concatenate(([0.0], np.cumsum(level[:-1] * np.diff(times))))
    return lambda t: np.interp(t, times, area)


@dataclass(frozen=True)
class EngineRows:
    """Per-request features of one run for the engine's two lines (see the module
    docstring); ``decode`` and ``first`` mark the usable rows for each."""

    label: str
    tau: np.ndarray  # mean step time over the decode window
    weight: np.ndarray  # N − 1
    d_bar: np.ndarray
    p_bar: np.ndarray
    k_bar: np.ndarray
    ttft: np.ndarray  # the stage's own time to first token, from admission where known
    sent_ttft: np.ndarray  # from the call's send: its overhead and any wait included
    busy: np.ndarray  # how likely the engine was stepping when the call came (0..1)
    prompt: np.ndarray
    d0: np.ndarray  # sequences decoding at admission
    full: np.ndarray  # the engine was full when the request came
    decode: np.ndarray
    first: np.ndarray

    @property
    def n(self) -> int:
        return int((self.decode | self.first).sum())


def engine_rows(sr: StageRun, max_num_seqs: int, replicas: int = 1) -> EngineRows:
    """The features of :class:`EngineRows` for one run. A request that found the engine
    full (``max_num_seqs`` others per replica) waited for admission, which a measured TTFT
    cannot tell from prefill: it is left out of the TTFT line.

    With several ``replicas`` the rows do not say which replica served whom: the company a
    request had is taken as its share of everyone else's, 1 + (D̄ − 1) / replicas (what a
    balancing router gives on average); D₀ likewise."""
    n_out = sr.tokens_out
    prompt = sr.tokens_in
    end = sr.arrival_s + sr.latency_s - sr.after_s
    ft = sr.arrival_s + sr.ttft_s
    start = end - sr.total_s
    admitted = start + (np.where(np.isfinite(sr.wait_s), sr.wait_s, 0.0) if sr.split else 0.0)
    seen = np.isfinite(end) & np.isfinite(ft) & np.isfinite(start) & (n_out >= 1)
    dec = seen & (n_out >= 2) & (end > ft)
    pre = seen & (ft > admitted)
    ones = np.ones(end.size)
    i_d = _integral(np.where(dec, ft, np.nan), np.where(dec, end, np.nan), ones)
    rate = np.where(pre, prompt / np.where(pre, ft - admitted, 1.0), 0.0)
    i_p = _integral(np.where(pre, admitted, np.nan), np.where(pre, ft, np.nan), rate)
    held = prompt + n_out / 2
    i_k = _integral(np.where(dec, ft, np.nan), np.where(dec, end, np.nan), held)
    with np.errstate(invalid="ignore", divide="ignore"):
        width = end - ft
        steps = n_out - 1
        tau = width / steps
        d_bar = (i_d(end) - i_d(ft)) / width
        p_bar = (i_p(end) - i_p(ft)) / steps
        k_bar = (i_k(end) - i_k(ft)) / width
    decoding_ft = np.where(dec, ft, np.nan)
    decoding_end = np.where(dec, end, np.nan)
    d0 = in_flight_at(decoding_ft, decoding_end, np.where(seen, admitted, 0.0)) / replicas
    d_bar = 1 + (d_bar - 1) / replicas
    p_bar = p_bar / replicas
    k_bar = k_bar / replicas
    ttft = ft - admitted
    others = in_flight_at(np.where(seen, start, np.nan), end, np.where(seen, start, 0.0)) - 1
    decode = sr.usable & dec & np.isfinite(tau) & (tau > 0)
    capacity = max_num_seqs * replicas
    first = sr.usable & seen & np.isfinite(ttft) & (ttft > 0) & (others < capacity)
    return EngineRows(
        label=sr.label,
        tau=tau,
        weight=np.where(dec, steps, 0.0),
        d_bar=d_bar,
        p_bar=p_bar,
        k_bar=k_bar,
        ttft=ttft,
        # from the request's arrival plus its earlier stages' times, not from end − stage
        # time: the caller's own time between stages (request parsing, prompt building, the
        # relays) then lands in the first token's overhead, where the model has it
        sent_ttft=ft - np.where(np.isfinite(sr.start_s), sr.start_s, start),
        busy=np.clip(others / replicas, 0.0, 1.0),
        prompt=prompt,
        d0=d0,
        full=seen & sr.usable & (others >= capacity),
        decode=decode,
        first=first,
    )


def _cat(rows: Sequence[EngineRows], name: str, mask: str) -> np.ndarray:
    return np.concatenate([getattr(r, name)[getattr(r, mask)] for r in rows])


def _quantiles_ms(fit: LinearFit) -> str:
    lo, mid, hi = (1000 * q for q in fit.resid_q)
    return f"residuals 5/50/95 % {lo:.2g}/{mid:.2g}/{hi:.2g} ms"


def fit_llm_engine(stage: LlmEngineStage, runs: Sequence[StageRun], options: Options) -> StageFit:
    """Fit ``step.base_s``, ``step.per_decode_seq_s`` and, where the prompts tell,
    ``step.per_prefill_token_s`` (see the module docstring)."""
    rows = [engine_rows(r, stage.max_num_seqs, stage.replicas) for r in runs]
    n_dec = sum(int(r.decode.sum()) for r in rows)
    if n_dec < options.min_samples:
        return refused(
            stage.name,
            stage.kind,
            n_dec,
            f"{n_dec} usable answer(s) of 2 tokens or more, fewer than {options.min_samples}; "
            "kept as it was",
        )
    prior = stage.step
    tau = _cat(rows, "tau", "decode")
    weight = _cat(rows, "weight", "decode")
    d_bar = _cat(rows, "d_bar", "decode")
    p_bar = _cat(rows, "p_bar", "decode")
    k_bar = _cat(rows, "k_bar", "decode")
    ttft = _cat(rows, "ttft", "first")
    prompt = _cat(rows, "prompt", "first")
    d0 = _cat(rows, "d0", "first")
    budget = np.maximum(stage.max_batched_tokens - d0, 1.0)
    n_prefill = np.maximum(np.ceil(prompt / budget), 1.0)
    identifiable = float(d_bar.std()) >= MIN_DECODE_SPREAD
    pp = prior.per_prefill_token_s
    pc = prior.per_context_token_s
    base, pd = prior.base_s, prior.per_decode_seq_s
    decode_fit: LinearFit | None = None
    prefill = None
    base_se = pd_se = math.nan
    ones = np.ones(tau.size)
    for _ in range(_ROUNDS):
        y = tau - pp * p_bar - pc * k_bar
        pd_why = (
            f"kept (D̄ varies too little: sd {float(d_bar.std()):.2g} < {MIN_DECODE_SPREAD:g} "
            "sequences; add runs at higher concurrency)"
        )
        line: LinearFit | None = None
        if identifiable:
            line = fit_linear({"base_s": ones, "per_decode_seq_s": d_bar}, y, weights=weight)
            pd_why = "0 (no significant rise with D̄)"
            if line.significant("per_decode_seq_s"):
                pd = float(line["per_decode_seq_s"].value)
                pd_se = float(line["per_decode_seq_s"].se)
                pd_why = "fitted"
        if line is None or pd_why != "fitted":
            # per_decode_seq_s fixed (the profile's, or 0): base_s is the weighted mean rest
            pd = prior.per_decode_seq_s if not identifiable else 0.0
            pd_se = math.nan
            line = fit_linear({"base_s": ones}, y - pd * d_bar, weights=weight)
        decode_fit = line
        base = float(line["base_s"].value)
        base_se = float(line["base_s"].se)
        if ttft.size >= options.min_samples:
            y2 = ttft - n_prefill * (base + pd * d0)
            prefill = choose_slope(prompt, y2, prior.per_prefill_token_s, "per_prefill_token_s")
            pp = prefill.value
    assert decode_fit is not None
    pp_se = 0.0  # a kept prior is taken as given; a fitted slope brings its uncertainty
    if prefill is not None and prefill.significant and prefill.fit is not None:
        pp_se = float(prefill.fit["slope"].se)
    overhead = _overhead_key(stage, rows, (base, pd, pp, pp_se), options)
    warnings = [w for r in runs for w in load_warnings(r, check_in_flight=False)]
    warnings += _prompt_mismatch(stage.name, runs)
    came = sum(int((r.full | r.first).sum()) for r in rows)
    full = sum(int(r.full.sum()) for r in rows) / came if came else 0.0
    if full > 0.05:
        warnings.append(
            f"{stage.name}: the engine was full (max_num_seqs {stage.max_num_seqs} requests) "
            f"when {full:.0%} of the requests arrived (left out of the TTFT line: their TTFT "
            "includes queueing); the runs were not at low load"
        )
    if base <= 0:
        return refused(
            stage.name,
            stage.kind,
            n_dec,
            f"the fitted step.base_s is not positive ({base:.3g} s); kept as it was "
            f"(R²={decode_fit.r2:.2f}: check the runs' load)",
        )
    ci = 1.959963984540054
    per_run = ", ".join(
        f"{r.label} (n={int(r.decode.sum())}, D̄ {float(np.average(r.d_bar[r.decode])):.2g})"
        for r in rows
        if r.decode.any()
    )
    step = {
        "base_s": sig(base),
        "per_prefill_token_s": sig(pp),
        "per_decode_seq_s": sig(pd),
        "per_context_token_s": sig(pc),
    }
    if "per_context_token_s" not in prior.model_fields_set and pc == 0:
        del step["per_context_token_s"]
    pd_text = (
        f"per_decode_seq_s {pd:.4g} s [{pd - ci * pd_se:.4g}, {pd + ci * pd_se:.4g}]"
        if pd_why == "fitted"
        else f"per_decode_seq_s {pd:.4g} s {pd_why}"
    )
    prefill_text = "per_prefill_token_s: kept (too few first tokens)"
    intercept = ""
    if prefill is not None:
        prefill_text = prefill.why
        if prefill.fit is not None:
            c = float(prefill.fit["intercept"].value)
            intercept = (
                f" (TTFT line intercept {1000 * c:.3g} ms: the wait for the step in progress "
                "and any HTTP hop, not part of the step)"
            )
    comment = (
        f"fitted: base_s {base:.4g} s [{base - ci * base_se:.4g}, {base + ci * base_se:.4g}], "
        f"{pd_text}, by weighted least squares of each answer's time per output token on D̄, "
        f"the mean number of sequences decoding with it (from the rows' first-token and end "
        f"times): {decode_fit.describe()}, {_quantiles_ms(decode_fit)}; {prefill_text}"
        f"{intercept}; per_context_token_s kept; runs: {per_run}; was "
        f"{compact(prior.model_dump(mode='json'))}"
    )
    keys = [KeyFit("step", step, comment)]
    overhead_text = ""
    if overhead is not None:
        overhead_key = overhead[0]
        keys.append(overhead_key)
        if overhead_key.value is not None:
            mean = overhead_key.value.get("mean", overhead_key.value.get("value", 0.0))
            overhead_text = f", call overhead {overhead_key.value['kind']} {1000 * mean:.3g} ms"
    return StageFit(
        stage=stage.name,
        kind=stage.kind,
        fitted=True,
        n=n_dec,
        summary=f"step base {base:.4g} s + {pd:.3g} s/decoding seq + {pp:.3g} s/prefill token "
        f"(R² {decode_fit.r2:.2f}){overhead_text}",
        keys=tuple(keys),
        warnings=tuple(warnings),
        details={
            "base_s": (base, base_se),
            "per_decode_seq_s": (pd, pd_se),
            "per_prefill_token_s": prefill,
            "decode_fit": decode_fit,
            "call_overhead": None if overhead is None else overhead[1],
        },
    )


PROMPT_MISMATCH = 0.05  # warn when the workload's prompts differ from the served ones by more


def _prompt_mismatch(name: str, runs: Sequence[StageRun]) -> list[str]:
    """A warning when the prompts the service reported (usage: ``tokens_in``) differ from
    what the runs' scenario makes (the workload rebuilt from it): the model would prefill
    the scenario's, so its steps and first tokens would be off by the difference."""
    served: list[np.ndarray] = []
    planned: list[np.ndarray] = []
    for r in runs:
        if r.tokens is None:
            continue
        ok = r.usable & (r.tokens_in > 0) & np.isfinite(r.tokens)
        served.append(r.tokens_in[ok])
        planned.append(r.tokens[ok])
    if not served or sum(a.size for a in served) == 0:
        return []
    got, want = float(np.concatenate(served).mean()), float(np.concatenate(planned).mean())
    if want <= 0 or abs(got - want) / want <= PROMPT_MISMATCH:
        return []
    return [
        f"{name}: the service reported prompts of {got:.0f} tokens on average, where the runs' "
        f"scenario makes {want:.0f} ({(want - got) / got:+.0%}): the model prefills the "
        "scenario's, so adjust its request mix (chunk_tokens, query_tokens) to what is served"
    ]


def _overhead_key(
    stage: LlmEngineStage,
    rows: Sequence[EngineRows],
    step: tuple[float, float, float, float],
    options: Options,
) -> tuple[KeyFit, tuple[float, float, float]] | None:
    """``call_overhead`` from the first-token rows (see the module docstring) and its mean's
    (estimate, low, high) 95 % interval; None when there are too few rows. ``step``: the
    fitted base_s, per_decode_seq_s, per_prefill_token_s and the latter's standard error
    (carried into the interval; 0 when the slope is the profile's, kept)."""
    base, pd, pp, pp_se = step
    sent = _cat(rows, "sent_ttft", "first")
    ok = np.isfinite(sent)
    if int(ok.sum()) < options.min_samples:
        return None
    busy = _cat(rows, "busy", "first")[ok]
    prompt = _cat(rows, "prompt", "first")[ok]
    d0 = _cat(rows, "d0", "first")[ok]
    budget = np.maximum(stage.max_batched_tokens - d0, 1.0)
    n_prefill = np.maximum(np.ceil(prompt / budget), 1.0)
    step0 = base + pd * d0
    rest = sent[ok] - n_prefill * step0 - pp * prompt
    idle = busy == 0
    if int(idle.sum()) >= MIN_IDLE_CALLS:
        # the engine was idle: its part is exactly the prefill steps, so the rest is the
        # overhead alone, spread included
        rest = rest[idle]
        spread = float(rest.std())
        source = (
            f"from the first tokens of the {rest.size} calls that found the engine idle "
            f"(of {idle.size}): time since the call was sent less the prefill steps at the "
            f"fitted step formula; sd {1000 * spread:.3g} ms"
        )
    else:
        # busy: take off the step in progress too, uniform over a step (its variance is not
        # the overhead's: the model draws it itself). An approximation: steps carrying other
        # calls' prefill are longer than base + per_decode_seq_s·D₀.
        rest = rest - 0.5 * step0 * busy
        step_var = busy * step0**2 / 3 - (busy * step0) ** 2 / 4
        spread = math.sqrt(max(float(rest.var()) - float(step_var.mean()), 0.0))
        source = (
            f"from the first tokens of {rest.size} calls, {int(idle.sum())} of them with the "
            f"engine idle (fewer than {MIN_IDLE_CALLS}): time since the call was sent less "
            f"the prefill steps at the fitted step formula and half a step when the engine was "
            f"busy (approximate); sd {1000 * spread:.3g} ms once the step in progress's share "
            f"is taken off"
        )
    mean = float(rest.mean())
    # the mean's own scatter, and the prefill slope's uncertainty over the prompts' mean
    se = math.hypot(float(rest.std(ddof=1)) / math.sqrt(rest.size), pp_se * float(prompt.mean()))
    low, high = mean - 1.959963984540054 * se, mean + 1.959963984540054 * se
    was = "was " + (
        compact(stage.call_overhead.model_dump(mode="json", exclude_none=True))
        if stage.call_overhead is not None
        else "none"
    )
    interval = (mean, low, high)
    if low <= 0:
        return KeyFit(
            "call_overhead",
            None,
            f"fitted: no call overhead: not significantly above 0 (mean {mean:.3g} s, "
            f"[{low:.3g}, {high:.3g}]) {source}; {was}",
            stage.call_overhead is not None,
        ), interval
    cv = spread / mean
    value: dict[str, Any]
    if cv < options.deterministic_cv:
        value = {"kind": "deterministic", "value": sig(mean)}
        family = "deterministic"
    else:
        value = {"kind": "gamma", "mean": sig(mean), "cv": sig(cv)}
        family = f"gamma, cv {cv:.3g} (mean and variance matched)"
    return KeyFit(
        "call_overhead",
        value,
        f"fitted: call overhead {family}, mean {mean:.4g} s [{low:.4g}, {high:.4g}] (with the "
        f"fitted prefill slope's uncertainty, if any) {source}; {was}",
    ), interval


def fit_llm_api(stage: LlmApiStage, runs: Sequence[StageRun], options: Options) -> StageFit:
    """Fit ``ttft``, ``prefill_per_token_s`` and ``time_per_output_token_s``."""
    first_t: list[np.ndarray] = []
    prompts: list[np.ndarray] = []
    gaps: list[np.ndarray] = []
    steps: list[np.ndarray] = []
    busy: list[np.ndarray] = []
    for r in runs:
        to_end = r.latency_s - r.after_s - r.ttft_s
        own = r.time_s - to_end
        ok = r.usable & np.isfinite(own) & (own > 0) & np.isfinite(to_end)
        if not r.split:  # a measured call that found every slot busy queued for one
            ok &= free_on_arrival(r)
        first_t.append(own[ok])
        prompts.append(r.tokens_in[ok])
        dec = ok & (r.tokens_out >= 2)
        gaps.append(to_end[dec])
        steps.append(r.tokens_out[dec] - 1)
        ends = r.start_s + r.total_s
        busy.append(in_flight_at(r.start_s, ends, r.start_s[dec]))
    ttft = np.concatenate(first_t)
    prompt = np.concatenate(prompts)
    if ttft.size < options.min_samples:
        return refused(
            stage.name,
            stage.kind,
            int(ttft.size),
            f"{ttft.size} usable answer(s), fewer than {options.min_samples}; kept as it was",
        )
    slope = choose_slope(prompt, ttft, stage.prefill_per_token_s, "prefill_per_token_s")
    rest = ttft - slope.value * prompt
    positive = rest > 0
    if positive.sum() < options.min_samples:
        return refused(
            stage.name,
            stage.kind,
            int(positive.sum()),
            "too few positive first-token times once the per-token part is taken off; kept "
            "as it was",
        )
    dfit = fit_distribution(
        rest[positive],
        force_empirical=options.force_empirical,
        alpha=options.alpha,
        deterministic_cv=options.deterministic_cv,
    )
    dropped = int((~positive).sum())
    less = " less the per-token part" if slope.value else ""
    note = f"; {dropped} time(s) ≤ 0 after that left out" if dropped else ""
    keys = [
        KeyFit(
            "ttft",
            dfit.distribution.model_dump(mode="json", exclude_none=True),
            f"fitted: {dfit.describe()}; from the stage time to the first token (stage time − "
            f"(latency − ttft)){less}{note}; runs: {runs_text(runs)}; was "
            f"{compact(stage.ttft.model_dump(mode='json', exclude_none=True))}",
        ),
        KeyFit("prefill_per_token_s", sig(slope.value), slope.why, slope.changed),
    ]
    warnings = [w for r in runs for w in load_warnings(r, check_in_flight=False)]
    gap = np.concatenate(gaps)
    n_steps = np.concatenate(steps)
    tpot_fit: LinearFit | None = None
    if gap.size >= options.min_samples:
        tau = gap / n_steps
        tpot_fit = fit_linear({"tpot": np.ones(tau.size)}, tau, weights=n_steps)
        est = tpot_fit["tpot"]
        if est.value > 0:
            keys.append(
                KeyFit(
                    "time_per_output_token_s",
                    sig(est.value),
                    f"fitted: {est.value:.4g} s [{est.low:.4g}, {est.high:.4g}] = Σ(latency − "
                    f"ttft) / Σ(tokens_out − 1) over {gap.size} answers of 2 tokens or more; "
                    f"was {stage.time_per_output_token_s:g}",
                )
            )
        in_flight = np.concatenate(busy)
        ok = np.isfinite(in_flight)
        if ok.sum() >= 30 and np.ptp(in_flight[ok]) > 0:
            rho, p = stats.spearmanr(in_flight[ok], tau[ok])
            if float(rho) > 0.2 and float(p) < 0.001:
                warnings.append(
                    f"{stage.name}: the time per output token rises with the calls in flight "
                    f"(Spearman ρ={float(rho):.2f}); llm_api keeps it fixed (an llm_engine "
                    "stage models a batch effect)"
                )
    else:
        warnings.append(
            f"{stage.name}: time_per_output_token_s kept: {gap.size} answers of 2 tokens or "
            f"more, fewer than {options.min_samples}"
        )
    return StageFit(
        stage=stage.name,
        kind=stage.kind,
        fitted=True,
        n=int(ttft.size),
        summary=f"ttft {dfit.family} mean {dfit.mean.value:.4g} s"
        + (f", {tpot_fit['tpot'].value:.3g} s/token" if tpot_fit is not None else ""),
        keys=tuple(keys),
        warnings=tuple(warnings),
        details={"ttft": dfit, "prefill_per_token_s": slope, "tpot": tpot_fit},
    )
