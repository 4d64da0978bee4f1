"""The whole reference stack, started once for the integration tests and stopped after them.

Small corpus, free ports, a private data folder: nothing outside 127.0.0.1 and the test's
temporary folder is touched.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ragstress.config.loader import load_profile
from ragstress.reference.stack import ReferenceStack, StackOptions
from tests.builders import REFERENCE_PROFILE, TEST_CORPUS, reference_data_dir


@pytest.fixture(scope="session")
def reference_stack() -> Iterator[ReferenceStack]:
    with reference_data_dir() as data_dir:
        options = StackOptions(
            profile=load_profile(REFERENCE_PROFILE),
            data_dir=data_dir,
            gateway_port=None,
            corpus=TEST_CORPUS,
            startup_timeout_s=90,
        )
        with ReferenceStack(options) as stack:
            yield stack
