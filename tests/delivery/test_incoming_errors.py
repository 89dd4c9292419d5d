"""POST /server/incoming_data/ refusals: one test per error, each with the exact JSON body and
status, and proof that nothing was stored, scheduled after commit, or enqueued."""

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.test import Client, override_settings
from django.utils import timezone
from redis.exceptions import ConnectionError as RedisConnectionError

from delivery.models import DeliveryLog, Event
from identity import services as identity_services
from identity.models import Account, User
from identity.selectors import account_id_for_app_secret
from tests.delivery.conftest import INCOMING, Poster, sink_destination
from tests.sink import Sink

VALID = json.dumps({"order": 1})

Capture = Callable[..., AbstractContextManager[list[Callable[[], Any]]]]


def error(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "code": code, "message": message}


@pytest.fixture
def destinations(account: Account, sink: Sink) -> None:
    """Two active destinations: an accepted event would create two logs and two tasks."""
    sink_destination(account, sink, "/a")
    sink_destination(account, sink, "/b", http_method="GET")


@pytest.fixture
def nothing_written(
    destinations: None,
    django_capture_on_commit_callbacks: Capture,
    enqueued: list[Any],
    sink: Sink,
) -> Callable[[], AbstractContextManager[None]]:
    """A context around one refused request: afterwards no event, no log, no on-commit
    callback, no task and no request at any destination."""

    @contextmanager
    def check() -> Iterator[None]:
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            yield
        assert Event.objects.count() == 0
        assert DeliveryLog.objects.count() == 0
        assert callbacks == []
        assert enqueued == []
        assert sink.received() == []

    return check


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("not json", id="not-json"),
        pytest.param('{"order": 1', id="truncated-json"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param("", id="empty"),
        pytest.param("[1, 2]", id="json-array"),
        pytest.param('"hello"', id="json-string"),
        pytest.param("42", id="json-number"),
        pytest.param("null", id="json-null"),
    ],
)
def test_body_that_is_not_a_json_object_is_invalid_data(
    post_incoming: Poster, app_secret: str, nothing_written: Any, body: str | bytes
) -> None:
    with nothing_written():
        response = post_incoming(body, token=app_secret)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json() == error("invalid_data", "Invalid Data")


@pytest.mark.parametrize("event_id", ["x" * 256, ""], ids=["256-chars", "empty"])
def test_event_id_outside_1_to_255_characters_is_invalid(
    post_incoming: Poster, app_secret: str, nothing_written: Any, event_id: str
) -> None:
    with nothing_written():
        response = post_incoming(VALID, token=app_secret, event_id=event_id)
    assert response.status_code == 400
    assert response.json() == error(
        "invalid_event_id", "CL-X-EVENT-ID must be 1 to 255 characters."
    )


def test_missing_token_is_unauthenticated(post_incoming: Poster, nothing_written: Any) -> None:
    with nothing_written():
        response = post_incoming(VALID)
    assert response.status_code == 401
    assert response.json() == error("unauthenticated", "Missing or invalid CL-X-TOKEN.")


def test_wrong_token_is_unauthenticated(
    post_incoming: Poster, app_secret: str, nothing_written: Any
) -> None:
    with nothing_written():
        response = post_incoming(VALID, token=app_secret + "x")
    assert response.status_code == 401
    assert response.json() == error("unauthenticated", "Missing or invalid CL-X-TOKEN.")


def test_rotated_away_secret_is_unauthenticated_at_once(
    post_incoming: Poster,
    account: Account,
    admin_user: User,
    app_secret: str,
    nothing_written: Any,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    assert account_id_for_app_secret(app_secret) == account.pk  # now cached
    with django_capture_on_commit_callbacks(execute=True):
        identity_services.account_rotate_secret(actor=admin_user, account_id=account.pk)
    with nothing_written():
        response = post_incoming(VALID, token=app_secret)
    assert response.status_code == 401
    assert response.json() == error("unauthenticated", "Missing or invalid CL-X-TOKEN.")


class _Clock:
    """identity.selectors' monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> tuple[_Clock, list[str]]:
    """A hand-moved clock for the app-secret lookup, and the shared-cache reads it makes."""
    from identity import selectors

    clock = _Clock()
    monkeypatch.setattr(selectors.time, "monotonic", clock)
    reads: list[str] = []
    real_get = selectors.cache.get

    def get(key: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(key)
        return real_get(key, *args, **kwargs)

    monkeypatch.setattr(selectors.cache, "get", get)
    return clock, reads


@override_settings(APP_SECRET_LOCAL_SECONDS=1.0)
def test_an_app_secret_lookup_is_kept_in_the_process_for_a_second(
    account: Account, app_secret: str, lookups: tuple[_Clock, list[str]]
) -> None:
    clock, reads = lookups
    assert account_id_for_app_secret(app_secret) == account.pk  # database, then both caches
    assert len(reads) == 1
    clock.now += 0.99
    assert account_id_for_app_secret(app_secret) == account.pk
    assert len(reads) == 1  # no cache round trip
    clock.now += 0.02
    assert account_id_for_app_secret(app_secret) == account.pk
    assert len(reads) == 2  # the shared cache again


@override_settings(APP_SECRET_LOCAL_SECONDS=1.0)
def test_a_secret_rotated_by_another_process_stops_working_here_within_a_second(
    account: Account, app_secret: str, lookups: tuple[_Clock, list[str]]
) -> None:
    from identity import secrets, selectors

    clock, _reads = lookups
    assert account_id_for_app_secret(app_secret) == account.pk
    # Another process rotates the secret: the database and the shared cache change, this
    # process's copy does not.
    Account.objects.filter(pk=account.pk).update(secret_hash="0" * 64)
    cache_key = selectors.app_secret_cache_key(secrets.digest(app_secret))
    selectors.cache.delete(cache_key)
    clock.now += 0.5
    assert account_id_for_app_secret(app_secret) == account.pk
    clock.now += 0.51
    assert account_id_for_app_secret(app_secret) is None


@override_settings(APP_SECRET_LOCAL_SECONDS=0.0)
def test_without_the_process_copy_every_lookup_reads_the_shared_cache(
    account: Account, app_secret: str, lookups: tuple[_Clock, list[str]]
) -> None:
    _clock, reads = lookups
    assert [account_id_for_app_secret(app_secret) for _ in range(3)] == [account.pk] * 3
    assert len(reads) == 3


def test_get_is_method_not_allowed(app_secret: str, nothing_written: Any) -> None:
    with nothing_written():
        response = Client().get(INCOMING, headers={"CL-X-TOKEN": app_secret})
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response.json() == error("method_not_allowed", "Use POST.")


@override_settings(INCOMING_MAX_BODY_BYTES=32)
def test_body_over_the_limit_is_payload_too_large(
    post_incoming: Poster, app_secret: str, nothing_written: Any
) -> None:
    body = json.dumps({"text": "x" * 30})
    assert len(body) == 42
    with nothing_written():
        response = post_incoming(body, token=app_secret)
    assert response.status_code == 413
    assert response.json() == error("payload_too_large", "Body larger than 32 bytes.")


@override_settings(INCOMING_MAX_BODY_BYTES=32)
def test_body_at_the_limit_is_accepted(post_incoming: Poster, app_secret: str) -> None:
    body = json.dumps({"text": "x" * 20})
    assert len(body) == 32
    assert post_incoming(body, token=app_secret).status_code == 202


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_other_content_type_is_unsupported_media_type(
    post_incoming: Poster, app_secret: str, nothing_written: Any, content_type: str
) -> None:
    with nothing_written():
        response = post_incoming(VALID, token=app_secret, content_type=content_type)
    assert response.status_code == 415
    assert response.json() == error(
        "unsupported_media_type", "Content-Type must be application/json."
    )


@override_settings(INCOMING_RATE_LIMIT=2)
def test_requests_over_the_rate_limit_are_refused_with_retry_after(
    post_incoming: Poster,
    app_secret: str,
    destinations: None,
    django_capture_on_commit_callbacks: Capture,
    enqueued: list[Any],
) -> None:
    # The window is one second: a boundary may fall between requests, so send until refused
    # and check that the refused request changed nothing.
    for _ in range(10):
        before = (Event.objects.count(), DeliveryLog.objects.count(), len(enqueued))
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            response = post_incoming(VALID, token=app_secret)
        if response.status_code != 202:
            break
    assert response.status_code == 429
    assert response["Retry-After"] == "1"
    assert response.json() == error("rate_limited", "Rate limit exceeded.")
    assert before[0] >= 2
    assert (Event.objects.count(), DeliveryLog.objects.count(), len(enqueued)) == before
    assert callbacks == []


# --- Outages and unexpected errors: JSON, never Django's HTML page ---------------------------

UNAVAILABLE = error("unavailable", "Temporarily unavailable; retry.")


def _database_down(exception: type[Exception]) -> Callable[..., Any]:
    def execute(*args: Any, **kwargs: Any) -> Any:
        raise exception("server closed the connection unexpectedly")

    return execute


@pytest.mark.parametrize("exception", [OperationalError, InterfaceError])
def test_database_outage_is_unavailable_with_retry_after(
    post_incoming: Poster, app_secret: str, nothing_written: Any, exception: type[Exception]
) -> None:
    with nothing_written(), connection.execute_wrapper(_database_down(exception)):
        response = post_incoming(VALID, token=app_secret)
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json() == UNAVAILABLE


def test_redis_outage_at_the_token_lookup_is_unavailable(
    post_incoming: Poster,
    app_secret: str,
    nothing_written: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from identity import selectors

    def get(key: str, *args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(selectors.cache, "get", get)
    with nothing_written():
        response = post_incoming(VALID, token=app_secret)
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json() == UNAVAILABLE


def test_redis_outage_after_commit_is_accepted_and_the_sweeper_fans_the_event_out(
    post_incoming: Poster,
    app_secret: str,
    destinations: None,
    enqueued: list[Any],
    sink: Sink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The event is stored: the answer is 202, and what the lost wake would have done is done
    # by the sweeper once the grace period has passed (not before).
    from delivery import engine, tasks

    assert account_id_for_app_secret(app_secret) is not None  # the token lookup is cached

    def down(*args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("Connection refused")

    with monkeypatch.context() as patch:
        patch.setattr(engine, "wake_flag", down)
        response = post_incoming(VALID, token=app_secret, event_id="lost-wake")
    assert response.status_code == 202, response.content
    assert response.json()["deliveries"] == 2
    event = Event.objects.get()
    assert (event.event_id, event.fanned_out_at, DeliveryLog.objects.count()) == (
        "lost-wake",
        None,
        0,
    )
    assert (enqueued, sink.received()) == ([], [])

    assert tasks.sweep_now() == 0
    assert Event.objects.filter(fanned_out_at=None).count() == 1
    grace = timedelta(seconds=settings.DELIVERY_SWEEP_GRACE_SECONDS + 1)
    tasks.sweep_now(now=timezone.now() + grace)
    event.refresh_from_db()
    assert event.fanned_out_at is not None
    assert sorted(DeliveryLog.objects.values_list("destination__url", "status")) == [
        (f"{sink.url}/a", "success"),
        (f"{sink.url}/b", "success"),
    ]
    assert len(sink.received()) == 2


def test_unexpected_error_is_a_json_500(
    app_secret: str, nothing_written: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from delivery import ingest

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(ingest, "event_ingest", broken)
    with nothing_written():
        response = Client(raise_request_exception=False).post(
            INCOMING, VALID, content_type="application/json", headers={"CL-X-TOKEN": app_secret}
        )
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == error("internal_error", "Unexpected error.")


@pytest.mark.django_db(transaction=True)
def test_account_deleted_after_the_token_check_is_unauthenticated(
    app_secret: str, account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    from delivery import views

    # The token was checked just before the account's deletion committed.
    monkeypatch.setattr(views, "account_id_for_app_secret", lambda raw: account.pk)
    Account.objects.filter(pk=account.pk).delete()
    response = Client().post(
        INCOMING, VALID, content_type="application/json", headers={"CL-X-TOKEN": app_secret}
    )
    assert response.status_code == 401
    assert response.json() == error("unauthenticated", "Missing or invalid CL-X-TOKEN.")
    assert (Event.objects.count(), DeliveryLog.objects.count()) == (0, 0)
