"""The run's link to the chaos proxy: load the scenario's faults at the start, aligned with
the run's clock, and clear them at the end — also on Ctrl-C or a crash.

The fault windows are the scenario's, divided by ``time_scale`` like the arrival times, so a
brownout written for minute 2 of the scenario happens at minute 2 of the replayed schedule.
Every fault the proxy holds carries its absolute end time, so even a driver killed with
SIGKILL leaves nothing active after the last window ends. What was loaded (or why loading
failed) is recorded in the run's ``driver.json`` so charts can shade the windows.

Imports no Locust: the Locust process calls it, and the CLI calls ``clear_quietly`` when it has
to salvage a run whose generator died.
"""

from __future__ import annotations

from typing import Any

from ragstress.config.scenario import Scenario

__all__ = ["FaultLink", "clear_quietly", "scaled_faults"]


def scaled_faults(scenario: Scenario, time_scale: float) -> list[dict[str, Any]]:
    """The scenario's faults as the proxy takes them, windows divided by ``time_scale``."""
    out = []
    for fault in scenario.faults:
        data = fault.model_dump(mode="json")
        data["start_s"] = fault.start_s / time_scale
        data["end_s"] = fault.end_s / time_scale
        out.append(data)
    return out


def clear_quietly(control_url: str) -> str | None:
    """Clear every fault; the error's line when the proxy could not be reached."""
    from ragstress.chaos.client import ChaosClient, ChaosError

    try:
        ChaosClient(control_url).clear()
    except ChaosError as exc:
        return str(exc)
    return None


class FaultLink:
    """One run's faults on the proxy at ``control_url`` (``None``: no proxy, nothing to do)."""

    def __init__(self, control_url: str | None, scenario: Scenario, time_scale: float) -> None:
        self.control_url = control_url
        self.faults = scaled_faults(scenario, time_scale) if control_url else []
        self.loaded: list[dict[str, Any]] = []
        self.error: str | None = None
        self.cleared = False

    def check(self) -> None:
        """Before the run: the proxy answers (raises ChaosError with one line otherwise)."""
        if self.control_url is None:
            return
        from ragstress.chaos.client import ChaosClient

        ChaosClient(self.control_url).wait_ready(timeout_s=5.0)

    def start(self, run_start_epoch: float) -> None:
        """Load the faults with their windows counted from ``run_start_epoch``. A refusal is
        recorded, not raised: the run goes on and its record says the faults were missing."""
        if self.control_url is None:
            return
        from ragstress.chaos.client import ChaosClient, ChaosError

        try:
            self.loaded = ChaosClient(self.control_url).load_plan(self.faults, run_start_epoch)
        except ChaosError as exc:
            self.error = str(exc)

    def stop(self) -> None:
        """Remove every fault (idempotent)."""
        if self.control_url is None or self.cleared:
            return
        self.cleared = True
        problem = clear_quietly(self.control_url)
        if problem is not None and self.error is None:
            self.error = f"clearing the faults failed: {problem} (they end at their end times)"

    def record(self) -> dict[str, Any]:
        """What the run's driver.json says about faults."""
        if self.control_url is None:
            return {}
        out: dict[str, Any] = {"chaos": self.control_url, "faults": self.faults}
        out["faults_loaded"] = len(self.loaded)
        if self.error is not None:
            out["chaos_error"] = self.error
        return out
