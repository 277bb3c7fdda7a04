"""Shared test set-up: hypothesis profiles and small helpers."""

import os
import signal

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # CI draws the same examples on every run: a red run can be reproduced
)
settings.register_profile(
    "dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# A suite started as a background job (``pytest &`` without job control) inherits SIGINT
# ignored, and Python then installs no KeyboardInterrupt handler: the tests that press a real
# Ctrl-C (tests/test_faults.py, and the sweep's, through its child processes, which inherit
# the disposition) could not see it. Give the suite Python's own handler back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
