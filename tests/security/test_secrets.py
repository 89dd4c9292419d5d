"""Secrets at rest and in logs.

User tokens and account app secrets exist in clear only in the answer that hands them out:
after signup, login, accountCreate and accountRotateSecret, no column of any table and no
cache entry holds them (only SHA-256 digests and a short visible prefix). Destination signing
secrets and header values must be usable (they go out with every request): they are stored
encrypted with the keys of ENCRYPTION_KEYS, which `manage.py rotate_encryption_keys` rotates.
Like passwords, tokens and app secrets, they never reach a log record — at DEBUG level,
through failed logins and deliveries that fail."""

import json
import logging
import pickle
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from io import StringIO
from typing import Any

import pytest
from cryptography.fernet import Fernet, MultiFernet
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import FieldError
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client, override_settings

from delivery.models import DeliveryAttempt, Destination
from identity.models import Account
from identity.secrets import VISIBLE_CHARS
from project import crypto
from tests.conftest import GraphQL
from tests.factories import make_destination
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
    assert sorted(Destination.objects.values_list("signing_secret", flat=True)) == sorted(
        signing_secrets
    )

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


# --- Destination secrets and headers: encrypted at rest ----------------------------------------

HEADERS = {"Authorization": "Bearer dest-api-key-0123456789", "X-Tenant": "acme-tenant-x7"}


def raw_destination_columns(pk: int) -> tuple[str, str]:
    """The signing_secret and headers columns of one destination as the database holds them."""
    table = connection.ops.quote_name(Destination._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT signing_secret, headers FROM {table} WHERE id = %s", [pk])
        secret, headers = cursor.fetchone()
    return str(secret), str(headers)


def decrypt(raw: str, *keys: str) -> str:
    return MultiFernet([Fernet(key) for key in keys]).decrypt(raw.encode()).decode()


def test_destination_secret_and_headers_are_stored_encrypted(account: Account) -> None:
    destination = make_destination(account, headers=HEADERS)
    secret = destination.signing_secret
    assert secret.startswith("whsec_")

    raw_secret, raw_headers = raw_destination_columns(destination.pk)

    for raw in (raw_secret, raw_headers):
        assert raw.startswith("gAAAAA")  # a Fernet token (version byte 0x80)
        for clear in (secret.removeprefix("whsec_"), *HEADERS, *HEADERS.values()):
            assert clear not in raw
    assert decrypt(raw_secret, *settings.ENCRYPTION_KEYS) == secret
    assert json.loads(decrypt(raw_headers, *settings.ENCRYPTION_KEYS)) == HEADERS
    stored = [text for _, text in every_stored_value()]
    for clear in (secret.removeprefix("whsec_"), *HEADERS.values()):
        assert not [text for text in stored if clear in text]


def test_encrypted_fields_read_back_as_clear_values(account: Account) -> None:
    destination = make_destination(account, headers=HEADERS)

    fresh = Destination.objects.get(pk=destination.pk)
    fresh.headers = {"X-Other": "2"}
    fresh.save()
    twin = make_destination(account, headers={"X-Other": "2"})

    assert (fresh.signing_secret, fresh.headers) == (destination.signing_secret, {"X-Other": "2"})
    assert Destination.objects.values_list("signing_secret", "headers").get(pk=fresh.pk) == (
        destination.signing_secret,
        {"X-Other": "2"},
    )
    # Every write encrypts anew (random IV): equal values do not show as equal ciphertexts.
    assert raw_destination_columns(fresh.pk)[1] != raw_destination_columns(twin.pk)[1]


@pytest.mark.parametrize("field", ["signing_secret", "headers"])
def test_encrypted_fields_refuse_lookups_that_cannot_match(account: Account, field: str) -> None:
    destination = make_destination(account)

    with pytest.raises(FieldError, match="Unsupported lookup 'exact'"):
        Destination.objects.filter(**{field: getattr(destination, field)}).count()
    assert Destination.objects.filter(**{f"{field}__isnull": False}).count() == 1


def test_a_value_no_configured_key_decrypts_fails_loudly(account: Account) -> None:
    destination = make_destination(account)

    with (
        override_settings(ENCRYPTION_KEYS=[Fernet.generate_key().decode()]),
        pytest.raises(crypto.DecryptionError) as raised,
    ):
        Destination.objects.get(pk=destination.pk)

    assert str(raised.value) == (
        "delivery.Destination.headers: no key of ENCRYPTION_KEYS decrypts the stored value "
        "(was the key that encrypted it removed before `manage.py rotate_encryption_keys` "
        "ran?)"
    )


def test_rotate_encryption_keys_moves_every_row_to_the_first_key(account: Account) -> None:
    old_keys = list(settings.ENCRYPTION_KEYS)
    new_key = Fernet.generate_key().decode()
    destinations = [make_destination(account, headers={"X-Key": f"value {n}"}) for n in range(5)]
    first, second = StringIO(), StringIO()

    with override_settings(ENCRYPTION_KEYS=[new_key, *old_keys]):
        # One row is already under the new key: it is left as it is.
        Destination.objects.get(pk=destinations[0].pk).save()
        call_command("rotate_encryption_keys", batch_size=2, stdout=first)
        call_command("rotate_encryption_keys", stdout=second)  # idempotent

    assert (
        first.getvalue() == "delivery.Destination: 4 of 5 rows re-encrypted with the first key.\n"
    )
    assert (
        second.getvalue() == "delivery.Destination: 0 of 5 rows re-encrypted with the first key.\n"
    )
    for destination in destinations:
        raw_secret, raw_headers = raw_destination_columns(destination.pk)
        assert decrypt(raw_secret, new_key) == destination.signing_secret
        assert json.loads(decrypt(raw_headers, new_key)) == destination.headers
    with override_settings(ENCRYPTION_KEYS=[new_key]):  # the old key dropped
        assert list(
            Destination.objects.order_by("pk").values_list("signing_secret", "headers")
        ) == [(d.signing_secret, d.headers) for d in destinations]


def test_rotation_stops_with_the_field_named_when_no_key_decrypts_a_row(account: Account) -> None:
    destination = make_destination(account)
    before = raw_destination_columns(destination.pk)

    with (
        override_settings(ENCRYPTION_KEYS=[Fernet.generate_key().decode()]),
        pytest.raises(CommandError) as raised,
    ):
        call_command("rotate_encryption_keys", stdout=StringIO())

    assert str(raised.value).startswith(
        f"delivery.Destination.headers of row {destination.pk}: no key of ENCRYPTION_KEYS "
        "decrypts the stored value"
    )
    assert raw_destination_columns(destination.pk) == before
