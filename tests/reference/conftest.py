"""The whole reference stack, started once for the integration tests and stopped after them.

Small corpus, free ports, a private data folder: nothing outside 127.0.0.1 and the test's
temporary folder is touched.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ragstress.config.loader import load_profile
from ragstress.reference.stack import ReferenceStack, StackOptions
from tests.builders import REFERENCE_PROFILE, TEST_CORPUS


@pytest.fixture(scope="session")
def reference_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferenceStack]:
    options = StackOptions(
        profile=load_profile(REFERENCE_PROFILE),
        data_dir=tmp_path_factory.mktemp("reference"),
        gateway_port=None,
        corpus=TEST_CORPUS,
        startup_timeout_s=90,
    )
    with ReferenceStack(options) as stack:
        yield stack
