"""Hypothesis settings of the fuzz tests: no example database on disk, no deadline (a request
through the whole Django stack takes milliseconds and varies with the machine's load), and
function-scoped fixtures shared by the examples of one test on purpose (each example checks
what it changed, not absolute counts).

`HYPOTHESIS_PROFILE=deep` runs many more examples, for a local hunt."""

import os

from hypothesis import HealthCheck, settings

_common = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
}
settings.register_profile("fuzz", max_examples=200, **_common)
settings.register_profile("deep", max_examples=5000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fuzz"))
