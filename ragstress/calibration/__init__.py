"""``ragstress calibrate``: fit a profile's parameters from runs measured at low load.

Layers, each usable alone:

- :mod:`~ragstress.calibration.fit` — distribution families by AIC with a KS check, least
  squares with standard errors (pure numerics);
- :mod:`~ragstress.calibration.observe` — what a run's rows say about one stage, and whether
  the run was quiet enough to believe them;
- :mod:`~ragstress.calibration.stages` and :mod:`~ragstress.calibration.llm` — one fitter per
  stage kind;
- :mod:`~ragstress.calibration.core` — the profile in, the calibrated profile out (pure);
- :mod:`~ragstress.calibration.render` — the profile as YAML with a comment on every fit;
- :mod:`~ragstress.calibration.files` — reading run folders, writing the profile.
"""

from ragstress.calibration.common import KeyFit, Options, StageFit
from ragstress.calibration.core import Calibration, LoadedRun, calibrate
from ragstress.calibration.files import calibrate_files, calibration_text, load_run
from ragstress.calibration.fit import DistributionFit, LinearFit, fit_distribution, fit_linear
from ragstress.calibration.render import render_profile

__all__ = [
    "Calibration",
    "DistributionFit",
    "KeyFit",
    "LinearFit",
    "LoadedRun",
    "Options",
    "StageFit",
    "calibrate",
    "calibrate_files",
    "calibration_text",
    "fit_distribution",
    "fit_linear",
    "load_run",
    "render_profile",
]
