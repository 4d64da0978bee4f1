"""Typed, validated, frozen profiles and scenarios, loaded from YAML."""

from ragstress.config.distributions import (
    Deterministic,
    Distribution,
    Empirical,
    Exponential,
    Gamma,
    LogNormal,
)
from ragstress.config.loader import ConfigError, load_profile, load_scenario, parse_config
from ragstress.config.profile import LlmApiStage, PoolStage, Price, Profile, Stage
from ragstress.config.scenario import (
    ConstantArrivals,
    GammaArrivals,
    PoissonArrivals,
    RequestMix,
    Scenario,
    Slo,
    TraceArrivals,
)

__all__ = [
    "ConfigError",
    "ConstantArrivals",
    "Deterministic",
    "Distribution",
    "Empirical",
    "Exponential",
    "Gamma",
    "GammaArrivals",
    "LlmApiStage",
    "LogNormal",
    "PoissonArrivals",
    "PoolStage",
    "Price",
    "Profile",
    "RequestMix",
    "Scenario",
    "Slo",
    "Stage",
    "TraceArrivals",
    "load_profile",
    "load_scenario",
    "parse_config",
]
