"""The YAML writer: every shipped profile, written with comments, reads back equal."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragstress.calibration.render import WIDTH, render_profile
from ragstress.config import Profile, load_profile, parse_config

PROFILES = sorted((Path(__file__).resolve().parents[2] / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_shipped_profiles_round_trip(path: Path) -> None:
    profile = load_profile(path)
    first = profile.stages[0].name
    long = "fitted: " + "a very long comment that must be wrapped " * 6
    text = render_profile(
        profile,
        header=["header line", "another: with a colon # and a hash"],
        comments={(first, None): ["about the stage"], (first, "name"): [long]},
    )
    assert parse_config(text, Profile, str(path)) == profile
    assert text.startswith("# header line\n# another: with a colon # and a hash\n")
    assert "  # about the stage\n  - kind: " in text
    comment_lines = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    assert all(len(line) <= WIDTH for line in comment_lines)


def test_awkward_values_survive() -> None:
    profile = Profile.model_validate(
        {
            "name": "yes",  # YAML 1.1 would read a plain yes as true
            "description": 'quotes " and \\ and\nnewlines: #1',
            "stages": [
                {
                    "kind": "pool",
                    "name": "work",
                    "service": {"kind": "empirical", "values": [1e-05 * k for k in range(1, 300)]},
                    "per_token_s": 1e-07,
                }
            ],
        }
    )
    text = render_profile(profile)
    assert parse_config(text, Profile, "awkward.yaml") == profile
    assert '\nname: "yes"\n' in "\n" + text
    # a long list is wrapped under its key; only the one-line description may run long
    lines = [line for line in text.splitlines() if not line.startswith("description:")]
    assert all(len(line) <= WIDTH for line in lines)
