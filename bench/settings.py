"""Bench-only settings: the real settings, plus a bare reference view (see bench/urls.py).

Every server a benchmark starts runs with these settings, so the bare view and the real
endpoints are served by the same process, middleware and configuration."""

from project.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
