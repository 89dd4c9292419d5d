"""Importing the ASGI application (what daphne and `manage.py serve` do) sets the collector for
a process that holds many sockets (project/collector.py)."""

import gc

import project.asgi  # noqa: F401  (the import is what is tested)
from project.collector import THRESHOLDS


def test_the_asgi_process_collects_with_a_large_young_generation_and_frozen_imports() -> None:
    assert gc.get_threshold() == THRESHOLDS == (50_000, 20, 10)
    assert gc.get_freeze_count() > 50_000  # Django, strawberry and the project's own objects
