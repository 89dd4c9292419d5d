"""Fuzzing POST /server/incoming_data/ through the full Django stack: arbitrary bodies (bytes,
any JSON, JSON objects with awkward strings and numbers), headers (CL-X-EVENT-ID of any text
and length, garbage CL-X-TOKEN, content types, false Content-Length) and sizes around the limit.

Whatever arrives: never a 5xx; every answer has the documented shape and status; a refusal
writes nothing; a 202 wrote exactly one event (or none, for a duplicate) with one log per active
destination, and the event holds exactly the JSON object that was sent."""

import json
import math
from typing import Any

import pytest
from django.test import Client, override_settings
from hypothesis import given
from hypothesis import strategies as st

from delivery.models import DeliveryLog, Event
from identity.models import Account
from tests.factories import make_destination

INCOMING = "/server/incoming_data/"
MAX_BODY = 512
STATUS_OF = {
    "method_not_allowed": 405,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "invalid_event_id": 400,
    "unauthenticated": 401,
    "rate_limited": 429,
    "invalid_data": 400,
    "unavailable": 503,
}

# Header values as servers hand them to Django: bytes decoded as latin-1, no CR or LF.
header_text = st.text(
    st.characters(max_codepoint=0xFF, exclude_characters="\r\n", exclude_categories=[]),
    max_size=300,
)
# Strings as JSON can carry them: any character, also NUL and unpaired surrogates.
awkward_text = st.text(
    st.one_of(st.characters(), st.characters(categories=["Cs"]), st.just("\x00")), max_size=12
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**310),
    st.floats(),  # NaN and infinities included: json.dumps writes NaN / Infinity
    awkward_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(awkward_text, inner, max_size=4),
    max_leaves=12,
)


def encode(value: Any, ascii_only: bool) -> bytes:
    # surrogatepass: an unpaired surrogate becomes the (invalid) UTF-8 bytes a sender may send.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def nested(levels: int) -> bytes:
    """A JSON object whose deepest value sits `levels` levels down (the object is level 1)."""
    return b'{"a":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


bodies = st.one_of(
    st.binary(max_size=MAX_BODY + 64),
    st.builds(encode, json_values, st.booleans()),
    st.builds(encode, st.dictionaries(awkward_text, json_values, max_size=6), st.booleans()),
    # Deep nesting, past what a recursive parser can take.
    st.integers(min_value=1, max_value=200_000).map(nested),
)
content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            "application/json;charset=latin-1",
            "application/json; boundary=x",
            "application/jsonx",
            "text/plain",
            "multipart/form-data; boundary=x",
            "application/x-www-form-urlencoded",
            "",
        ]
    ),
    header_text,
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(bodies)
    # A false Content-Length, as servers pass it on: digits only (daphne, uvicorn and gunicorn
    # answer 400 themselves to anything else), and shorter than the body (a longer one makes
    # the test client, not the server, fail).
    content_length = draw(
        st.one_of(st.none(), st.integers(min_value=0, max_value=len(body)).map(str))
    )
    return {
        "body": body,
        "content_type": draw(content_types),
        "token": draw(st.one_of(st.sampled_from(["valid", "absent"]), header_text)),
        "event_id": draw(
            st.one_of(
                st.none(),
                header_text,
                st.text(st.characters(max_codepoint=0xFF), min_size=254, max_size=257),
                st.sampled_from(["dup-1", "dup-2"]),  # repeated: duplicates happen
            )
        ),
        "content_length": content_length,
    }


@pytest.fixture
def active_destinations(account: Account) -> int:
    make_destination(account)
    make_destination(account, http_method="GET")
    make_destination(account, is_active=False)
    return 2


def post(client: Client, request: dict[str, Any], app_secret: str) -> Any:
    headers: dict[str, str] = {}
    token = request["token"]
    if token != "absent":
        headers["CL-X-TOKEN"] = app_secret if token == "valid" else token
    if request["event_id"] is not None:
        headers["CL-X-EVENT-ID"] = request["event_id"]
    extra = {"CONTENT_TYPE": request["content_type"]}
    if request["content_length"] is not None:
        extra["CONTENT_LENGTH"] = request["content_length"]
    return client.post(
        INCOMING,
        request["body"],
        content_type=request["content_type"],
        headers=headers,
        **extra,
    )


def same_json(stored: Any, sent: Any) -> bool:
    """Equal as JSON values. PostgreSQL keeps numbers as decimals (5.2e+16 comes back as an
    integer), so numbers compare by value, floats within their precision."""
    if isinstance(sent, bool) or isinstance(stored, bool):
        return stored is sent
    if isinstance(sent, int | float) and isinstance(stored, int | float):
        if isinstance(sent, int) and isinstance(stored, int):
            return stored == sent
        return math.isclose(stored, sent, rel_tol=1e-15)
    if isinstance(sent, dict) and isinstance(stored, dict):
        return stored.keys() == sent.keys() and all(same_json(stored[k], sent[k]) for k in sent)
    if isinstance(sent, list) and isinstance(stored, list):
        return len(stored) == len(sent) and all(map(same_json, stored, sent))
    return type(stored) is type(sent) and stored == sent


def check(response: Any, request: dict[str, Any], before: tuple[int, int], logs_per: int) -> None:
    assert response.status_code < 500, (response.status_code, response.content)
    assert response["Content-Type"] == "application/json"
    answer = response.json()
    after = (Event.objects.count(), DeliveryLog.objects.count())
    if response.status_code != 202:
        assert set(answer) == {"success", "code", "message"}
        assert answer["success"] is False
        assert STATUS_OF[answer["code"]] == response.status_code
        assert after == before, "a refused request wrote something"
        return
    assert set(answer) == {"success", "message", "event_id", "deliveries", "duplicate"}
    assert (answer["success"], answer["message"], answer["deliveries"]) == (
        True,
        "Data Received",
        logs_per,
    )
    if request["event_id"] is not None:
        # The header's characters are its bytes as WSGI presents them (Latin-1); the service
        # reads those bytes as UTF-8 (a non-UTF-8 id is refused above).
        assert answer["event_id"] == request["event_id"].encode("latin-1").decode("utf-8")
    if answer["duplicate"]:
        assert after == before
        return
    assert after == (before[0] + 1, before[1] + logs_per)
    event = Event.objects.get(event_id=answer["event_id"])
    # What was stored is exactly the object that was sent (within the Content-Length read).
    sent = request["body"]
    if request["content_length"] is not None and request["content_length"].isdigit():
        sent = sent[: int(request["content_length"])]
    assert same_json(event.payload, json.loads(sent)), (event.payload, sent)
    assert event.size == len(sent)
    assert DeliveryLog.objects.filter(event=event).count() == logs_per


@override_settings(INCOMING_MAX_BODY_BYTES=MAX_BODY, INCOMING_RATE_LIMIT=0)
@given(request=requests())
def test_any_request_is_answered_cleanly_and_refusals_write_nothing(
    request: dict[str, Any], app_secret: str, active_destinations: int
) -> None:
    client = Client()
    before = (Event.objects.count(), DeliveryLog.objects.count())
    response = post(client, request, app_secret)
    check(response, request, before, active_destinations)


@override_settings(INCOMING_MAX_BODY_BYTES=MAX_BODY, INCOMING_RATE_LIMIT=0)
@given(
    payload=st.dictionaries(awkward_text, json_values, max_size=6),
    ascii_only=st.booleans(),
    event_id=st.one_of(st.none(), header_text),
)
def test_any_json_object_with_a_valid_token_is_stored_exactly_or_refused(
    payload: dict[str, Any],
    ascii_only: bool,
    event_id: str | None,
    app_secret: str,
    active_destinations: int,
) -> None:
    request = {
        "body": encode(payload, ascii_only),
        "content_type": "application/json",
        "token": "valid",
        "event_id": event_id,
        "content_length": None,
    }
    before = (Event.objects.count(), DeliveryLog.objects.count())
    response = post(Client(), request, app_secret)
    check(response, request, before, active_destinations)


# --- What the fuzzing found: each of these was a 500 (on PostgreSQL, or everywhere) ----------


@override_settings(INCOMING_RATE_LIMIT=0)
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"a": NaN}', id="NaN"),
        pytest.param(b'{"a": -Infinity}', id="Infinity"),
        pytest.param(b'{"a": 1e400}', id="overflowing-float"),
        pytest.param(b'{"a": "x\\u0000"}', id="NUL-in-value"),
        pytest.param(b'{"\\u0000": 1}', id="NUL-in-key"),
        pytest.param(b'{"a": ["\\ud800"]}', id="escaped-unpaired-surrogate"),
        pytest.param(b'{"a": "\xed\xa0\x80"}', id="encoded-unpaired-surrogate"),
        pytest.param('{"a": "\ud800"}'.encode("utf-16", "surrogatepass"), id="utf-16-surrogate"),
        pytest.param(b'{"a": 1' + b"0" * 400 + b".5}", id="overflowing-float-digits"),
        pytest.param(nested(101), id="101-levels"),
        pytest.param(nested(100_000), id="100000-levels"),
    ],
)
def test_json_that_cannot_be_stored_or_sent_on_is_invalid_data(
    body: bytes, app_secret: str, active_destinations: int
) -> None:
    response = Client().post(
        INCOMING, body, content_type="application/json", headers={"CL-X-TOKEN": app_secret}
    )

    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "code": "invalid_data",
        "message": "Invalid Data",
    }
    assert (Event.objects.count(), DeliveryLog.objects.count()) == (0, 0)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


@override_settings(INCOMING_RATE_LIMIT=0)
@pytest.mark.parametrize(
    ("body", "expected_depth"),
    [
        (nested(100), 100),
        (b'{"a": "\\ud83d\\ude00 \\\\u0000", "b": 1e308, "c": -0.0}', 1),
    ],
    ids=["100-levels", "surrogate-pair-backslash-u0000-largest-float"],
)
def test_json_at_the_edges_is_accepted_as_sent(
    body: bytes, expected_depth: int, app_secret: str, active_destinations: int
) -> None:
    response = Client().post(
        INCOMING, body, content_type="application/json", headers={"CL-X-TOKEN": app_secret}
    )

    assert response.status_code == 202, response.content
    [event] = Event.objects.all()
    assert same_json(event.payload, json.loads(body))
    assert depth(event.payload) == expected_depth


@override_settings(INCOMING_RATE_LIMIT=0)
def test_event_id_with_nul_is_invalid_event_id(app_secret: str, active_destinations: int) -> None:
    response = Client().post(
        INCOMING,
        b'{"a": 1}',
        content_type="application/json",
        headers={"CL-X-TOKEN": app_secret, "CL-X-EVENT-ID": "order\x001"},
    )

    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "code": "invalid_event_id",
        "message": "CL-X-EVENT-ID must not contain NUL.",
    }
    assert (Event.objects.count(), DeliveryLog.objects.count()) == (0, 0)
