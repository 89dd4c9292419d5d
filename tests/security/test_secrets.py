"""Secrets at rest and in logs.

User tokens and account app secrets exist in clear only in the answer that hands them out:
after signup, login, accountCreate and accountRotateSecret, no column of any table and no
cache entry holds them (only SHA-256 digests and a short visible prefix). Destination signing
secrets must be stored as they are (they sign every request) but, like passwords, tokens and
app secrets, they never reach a log record — at DEBUG level, through failed logins and
deliveries that fail."""

import logging
import pickle
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.test import Client

from delivery.models import DeliveryAttempt, Destination
from identity.secrets import VISIBLE_CHARS
from tests.conftest import GraphQL
from tests.sink import Sink

Capture = Callable[..., AbstractContextManager[list[Callable[[], Any]]]]

PASSWORD = "a long and secret passphrase 7"
WRONG_PASSWORD = "another secret passphrase 8"

SIGNUP = """mutation ($input: SignupInput!) { signup(input: $input) {
  ... on AuthPayload { token } ... on OperationInfo { messages { code } } } }"""
LOGIN = """mutation ($input: LoginInput!) { login(input: $input) {
  ... on AuthPayload { token } ... on OperationInfo { messages { code } } } }"""
ACCOUNT_CREATE = """mutation ($name: String!) { accountCreate(input: {name: $name}) {
  ... on AccountSecret { appSecretToken account { id } } } }"""
ROTATE = """mutation ($id: ID!) { accountRotateSecret(id: $id, graceSeconds: 3600) {
  ... on AccountSecret { appSecretToken } } }"""
DESTINATION_CREATE = """mutation ($input: DestinationCreateInput!) {
  destinationCreate(input: $input) { ... on Destination { id signingSecret } } }"""


def hidden_part(raw: str) -> str:
    """What must never be stored: the secret after its prefix and visible characters."""
    prefix = raw.split("_", 1)[0] + "_"
    return raw[len(prefix) + VISIBLE_CHARS :]


def every_stored_value() -> Iterator[tuple[str, str]]:
    """(table, value as text) for every column of every row of every table."""
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        value = bytes(value).decode("latin-1")
                    yield table, str(value)


def every_cached_value() -> Iterator[str]:
    """Every key and value in the cache (Redis keys of this run, or local memory)."""
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        for key in client.scan_iter(match=f"{settings.TEST_RUN_ID}:*"):
            yield key.decode("latin-1")
            value = client.get(key)
            if value is not None:
                yield value.decode("latin-1")
    else:
        for key, value in cache._cache.items():  # type: ignore[attr-defined]
            yield key
            yield str(pickle.loads(value) if isinstance(value, bytes) else value)


def test_tokens_and_app_secrets_are_stored_only_as_digests(gql: GraphQL, sink: Sink) -> None:
    signup = gql(
        SIGNUP,
        {"input": {"email": "me@example.com", "password": PASSWORD, "accountName": "Mine"}},
    )
    signup_token = signup["data"]["signup"]["token"]
    login_token = gql(LOGIN, {"input": {"email": "me@example.com", "password": PASSWORD}})["data"][
        "login"
    ]["token"]
    created = gql(ACCOUNT_CREATE, {"name": "Shop"}, token=login_token)["data"]["accountCreate"]
    first_secret = created["appSecretToken"]
    rotated_secret = gql(ROTATE, {"id": created["account"]["id"]}, token=login_token)["data"][
        "accountRotateSecret"
    ]["appSecretToken"]
    # Both app secrets in use (the first one in its grace period): lookups get cached.
    for secret in (first_secret, rotated_secret):
        response = Client().post(
            "/server/incoming_data/",
            b'{"a": 1}',
            content_type="application/json",
            headers={"CL-X-TOKEN": secret},
        )
        assert response.status_code == 202

    raw = {
        "signup token": signup_token,
        "login token": login_token,
        "app secret": first_secret,
        "rotated app secret": rotated_secret,
    }
    assert [value[:4] for value in raw.values()] == ["dpu_", "dpu_", "dpk_", "dpk_"]
    stored = list(every_stored_value())
    assert len(stored) > 100  # the scan reads real rows
    for name, value in raw.items():
        hidden = hidden_part(value)
        assert len(hidden) >= 32
        found = [table for table, text in stored if hidden in text]
        assert not found, f"the {name} is stored in clear in {found}"
        assert not [text for text in every_cached_value() if hidden in text], f"{name} cached"
    assert not [table for table, text in stored if PASSWORD in text]


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record of every logger at DEBUG, including those the settings quiet down."""
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def record_texts(records: list[logging.LogRecord]) -> Iterator[str]:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in records:
        yield formatter.format(record)  # the message, its arguments and any traceback
        yield repr(record.args)
        yield repr(getattr(record, "request", ""))


def test_no_password_token_or_secret_reaches_the_logs(
    gql: GraphQL,
    sink: Sink,
    all_logs: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    token = gql(
        SIGNUP,
        {"input": {"email": "me@example.com", "password": PASSWORD, "accountName": "Mine"}},
    )["data"]["signup"]["token"]
    good = gql(LOGIN, {"input": {"email": "me@example.com", "password": PASSWORD}})
    bad = gql(LOGIN, {"input": {"email": "me@example.com", "password": WRONG_PASSWORD}})
    unknown = gql(LOGIN, {"input": {"email": "nobody@example.com", "password": WRONG_PASSWORD}})
    assert [m["code"] for m in bad["data"]["login"]["messages"]] == ["invalid_credentials"]
    assert [m["code"] for m in unknown["data"]["login"]["messages"]] == ["invalid_credentials"]
    created = gql(ACCOUNT_CREATE, {"name": "Shop"}, token=token)["data"]["accountCreate"]
    app_secret, account_id = created["appSecretToken"], created["account"]["id"]
    signing_secrets = [
        gql(
            DESTINATION_CREATE,
            {"input": {"accountId": account_id, "url": url, "httpMethod": "POST"}},
            token=token,
        )["data"]["destinationCreate"]["signingSecret"]
        for url in (
            "http://127.0.0.1:9/refused",  # nothing listens: a connection error
            f"{sink.url}/status/500",
            f"{sink.url}/ok",
        )
    ]
    # Deliveries with transport errors, run inline (Huey immediate mode).
    with django_capture_on_commit_callbacks(execute=True):
        accepted = Client().post(
            "/server/incoming_data/",
            b'{"order": 1}',
            content_type="application/json",
            headers={"CL-X-TOKEN": app_secret},
        )
    refused = Client().post(
        "/server/incoming_data/",
        b'{"order": 2}',
        content_type="application/json",
        headers={"CL-X-TOKEN": app_secret + "x"},
    )
    assert (accepted.status_code, refused.status_code) == (202, 401)
    attempts = DeliveryAttempt.objects.order_by("log__destination_id")
    assert [(a.error_class, a.status_code) for a in attempts] == [
        ("ConnectionError", None),
        ("HTTPStatus", 500),
        ("", 200),
    ]
    assert Destination.objects.filter(signing_secret__in=signing_secrets).count() == 3

    secrets = {
        "password": PASSWORD,
        "wrong password": WRONG_PASSWORD,
        "token": hidden_part(token),
        "login token": hidden_part(good["data"]["login"]["token"]),
        "app secret": hidden_part(app_secret),
        **{f"signing secret {n}": s.removeprefix("whsec_") for n, s in enumerate(signing_secrets)},
    }
    texts = list(record_texts(all_logs.records))
    assert len(all_logs.records) > 10  # the capture works: requests, tasks, failures
    for name, secret in secrets.items():
        leaked = [text for text in texts if secret in text]
        assert not leaked, f"the {name} is logged: {leaked[:1]}"
