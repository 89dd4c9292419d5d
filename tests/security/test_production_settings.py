"""Settings that protect a production deployment: ENCRYPTION_KEYS is required (and checked)
when DEBUG is off, and GraphQL introspection follows DEBUG unless GRAPHQL_INTROSPECTION says
otherwise. Each case loads `project.settings` in a fresh interpreter with only the variables
given (the test settings' own ENCRYPTION_KEYS and GRAPHQL_INTROSPECTION are removed)."""

import os
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet
from django.conf import settings

KEY_A = "vCiFNmWe7a3-M9QecqI4gUPEbu4bhdRVojGJywkrmng="
KEY_B = "JgM-H_6zowuDczD9JuUg_YzqmtGFKFI3N5QE4fG-zgE="
PRINT = "from project import settings as s; print(s.ENCRYPTION_KEYS, s.GRAPHQL_INTROSPECTION)"


def load_settings(**env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ENCRYPTION_KEYS", "GRAPHQL_INTROSPECTION", "DEBUG")
        and not k.startswith(("DJANGO_", "PYTEST_"))
    }
    return subprocess.run(
        [sys.executable, "-c", PRINT],
        cwd=settings.BASE_DIR,
        env={**base, "SECRET_KEY": "production-like", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    return result.stderr.strip().splitlines()[-1]


def test_production_settings_refuse_to_start_without_encryption_keys() -> None:
    assert error_line(load_settings(DEBUG="0")) == (
        "django.core.exceptions.ImproperlyConfigured: ENCRYPTION_KEYS is required when DEBUG is "
        "off (comma-separated Fernet keys, newest first; see README: Encryption at rest)"
    )


@pytest.mark.parametrize(
    ("value", "position"),
    [
        pytest.param("not-a-key", 1, id="not-base64"),
        pytest.param(f"{KEY_A},{KEY_B[:-2]}", 2, id="truncated"),
        pytest.param(f"{KEY_A},b'{KEY_B}'", 2, id="bytes-repr"),
    ],
)
def test_a_malformed_encryption_key_stops_start_up(value: str, position: int) -> None:
    assert error_line(load_settings(DEBUG="0", ENCRYPTION_KEYS=value)) == (
        f"django.core.exceptions.ImproperlyConfigured: ENCRYPTION_KEYS: key {position} is not "
        "a Fernet key (32 url-safe base64-encoded bytes)"
    )


def test_production_defaults_use_the_given_keys_and_turn_introspection_off() -> None:
    result = load_settings(DEBUG="0", ENCRYPTION_KEYS=f" {KEY_A} , {KEY_B} ")

    assert (result.returncode, result.stdout) == (0, f"['{KEY_A}', '{KEY_B}'] False\n")


def test_development_derives_a_key_from_secret_key_and_allows_introspection() -> None:
    first = load_settings(DEBUG="1")
    again = load_settings(DEBUG="1")
    other = load_settings(DEBUG="1", SECRET_KEY="another")

    keys, introspection = first.stdout.rsplit(" ", 1)
    assert (first.returncode, introspection) == (0, "True\n")
    assert first.stdout == again.stdout != other.stdout
    Fernet(eval(keys)[0])  # a valid key


@pytest.mark.parametrize(("debug", "value", "expected"), [("0", "1", "True"), ("1", "0", "False")])
def test_graphql_introspection_setting_overrides_the_debug_default(
    debug: str, value: str, expected: str
) -> None:
    result = load_settings(DEBUG=debug, ENCRYPTION_KEYS=KEY_A, GRAPHQL_INTROSPECTION=value)

    assert (result.returncode, result.stdout.split()[-1]) == (0, expected)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("1000", None),
        ("1001", "DELIVERY_BATCH_SIZE must be <= 1000; got 1001"),
        ("0", "DELIVERY_BATCH_SIZE must be >= 1; got 0"),
    ],
)
def test_delivery_batch_size_is_bounded_by_what_one_statement_can_carry(
    value: str, error: str | None
) -> None:
    result = load_settings(DEBUG="1", DELIVERY_BATCH_SIZE=value)
    if error is None:
        assert result.returncode == 0, result
    else:
        assert error_line(result) == f"django.core.exceptions.ImproperlyConfigured: {error}"
