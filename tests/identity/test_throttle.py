"""One throttle for every password check.

GraphQL `login`, `userUpdate(currentPassword)` and the admin site's login share sliding-window
failure counters: per (email, client address), per client address and per email. A guesser at
one address is slowed long before the owner, at another address, notices anything.
"""

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import limits.storage.memory
import limits.storage.redis
import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.test import Client
from pytest_django.fixtures import Settings

from identity import throttle
from identity.models import AuthToken, User
from tests.conftest import GraphQL, Persona
from tests.factories import PASSWORD, make_user
from tests.identity.helpers import OPERATION_INFO, db_state, invalid

WRONG = "wrong password 1"
# A multiple of 900 s: the start of what a fixed 15-minute window would be.
WINDOW_START = 1_800_000_000.0

INVALID_CREDENTIALS = invalid("invalid_credentials", "Invalid email or password.")
WRONG_CURRENT_PASSWORD = invalid(
    "invalid_credentials", "The current password is wrong.", "currentPassword"
)


def throttled(seconds: int) -> dict[str, Any]:
    return invalid("throttled", f"Too many failed logins. Try again in {seconds} seconds.")


class FakeClock:
    """Stands in for the `time` module where the throttle and limits' storages read it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _fresh_throttle() -> Iterator[None]:
    throttle.reset()
    yield
    throttle.reset()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(WINDOW_START)
    for module in (limits.storage.memory, limits.storage.redis, throttle):
        monkeypatch.setattr(module, "time", fake)
    return fake


LOGIN = (
    "mutation ($input: LoginInput!) { login(input: $input) { __typename "
    "... on AuthPayload { user { email } } " + OPERATION_INFO + " } }"
)


def _login(
    gql: GraphQL, email: str = "normal@example.com", password: str = PASSWORD, **meta: str
) -> dict[str, Any]:
    """Log in over GraphQL; `meta` sets request META such as REMOTE_ADDR."""
    response = gql.client.post(
        "/graphql/",
        {"query": LOGIN, "variables": {"input": {"email": email, "password": password}}},
        content_type="application/json",
        **meta,  # type: ignore[arg-type]
    )
    assert response.status_code == 200
    payload: dict[str, Any] = response.json()["data"]["login"]
    return payload


def _codes(payloads: list[dict[str, Any]]) -> list[str]:
    return [p["messages"][0]["code"] if p.get("messages") else p["__typename"] for p in payloads]


LOGGED_IN = {"__typename": "AuthPayload", "user": {"email": "normal@example.com"}}


# --- policy ------------------------------------------------------------------------------------


def test_default_policy() -> None:
    assert django_settings.LOGIN_FAILURES_PER_EMAIL_ADDRESS == "5/15minute"
    assert django_settings.LOGIN_FAILURES_PER_ADDRESS == "30/15minute"
    assert django_settings.LOGIN_FAILURES_PER_EMAIL == "100/hour"


@pytest.mark.parametrize("raw", ["5", "five/minute", "5/minute;10/hour", "0/minute"])
def test_malformed_limit_stops_start_up(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    from project.settings import _env_limit

    monkeypatch.setenv("LOGIN_FAILURES_PER_EMAIL", raw)

    with pytest.raises(ImproperlyConfigured) as error:
        _env_limit("LOGIN_FAILURES_PER_EMAIL", "100/hour")
    assert str(error.value) == (
        f"LOGIN_FAILURES_PER_EMAIL must be one limit like '100/hour'; got {raw!r}"
    )


def test_five_failures_from_one_address_throttle_that_address_even_with_right_password(
    gql: GraphQL, clock: FakeClock, normal_user: Persona
) -> None:
    failures = [_login(gql, password=WRONG) for _ in range(5)]
    tokens_before = AuthToken.objects.count()
    clock.now += 100

    right_password = _login(gql)
    other_spelling = _login(gql, " NORMAL@example.com ")

    assert failures == [INVALID_CREDENTIALS] * 5
    assert right_password == other_spelling == throttled(800)
    assert AuthToken.objects.count() == tokens_before


def test_guesser_at_one_address_does_not_lock_out_the_owner_at_another(
    gql: GraphQL, clock: FakeClock, normal_user: Persona
) -> None:
    guesses = [_login(gql, password=WRONG, REMOTE_ADDR="203.0.113.66") for _ in range(8)]

    owner = _login(gql, REMOTE_ADDR="198.51.100.2")
    owner_typo = _login(gql, password=WRONG, REMOTE_ADDR="198.51.100.2")

    assert _codes(guesses) == ["invalid_credentials"] * 5 + ["throttled"] * 3
    assert owner == LOGGED_IN
    assert owner_typo == INVALID_CREDENTIALS
    assert _login(gql, REMOTE_ADDR="203.0.113.66") == throttled(900)


def test_successful_login_clears_the_failures_of_its_email_and_address(
    gql: GraphQL, clock: FakeClock, normal_user: Persona
) -> None:
    before = [_login(gql, password=WRONG) for _ in range(4)]
    success = _login(gql)
    after = [_login(gql, password=WRONG) for _ in range(6)]

    assert _codes(before) == ["invalid_credentials"] * 4
    assert success == LOGGED_IN
    assert _codes(after) == ["invalid_credentials"] * 5 + ["throttled"]


def test_successful_logins_are_not_counted(gql: GraphQL, normal_user: Persona) -> None:
    assert [_login(gql) for _ in range(8)] == [LOGGED_IN] * 8


def test_window_slides_instead_of_resetting_at_a_fixed_boundary(
    gql: GraphQL, clock: FakeClock, normal_user: Persona
) -> None:
    clock.now = WINDOW_START + 899
    failures = [_login(gql, password=WRONG) for _ in range(5)]

    clock.now = WINDOW_START + 901  # a fixed 15-minute window would have started afresh
    just_after_boundary = _login(gql)
    clock.now = WINDOW_START + 899 + 899  # the failures are a second short of 15 minutes old
    at_window_end = _login(gql)
    clock.now = WINDOW_START + 899 + 901
    after_window = _login(gql)

    assert failures == [INVALID_CREDENTIALS] * 5
    assert just_after_boundary == throttled(898)
    assert at_window_end == throttled(1)
    assert after_window == LOGGED_IN


def test_failures_per_address_are_capped_over_all_emails(
    gql: GraphQL, clock: FakeClock, normal_user: Persona
) -> None:
    failures = [_login(gql, f"guess{i}@example.com") for i in range(30)]

    from_that_address = _login(gql)
    from_elsewhere = _login(gql, REMOTE_ADDR="198.51.100.2")

    assert failures == [INVALID_CREDENTIALS] * 30
    assert from_that_address == throttled(900)
    assert from_elsewhere == LOGGED_IN


def test_failures_per_email_are_capped_over_all_addresses(
    gql: GraphQL, clock: FakeClock, normal_user: Persona, admin: Persona
) -> None:
    # 20 addresses, 5 guesses each (the most each may make): 100 failures for one email.
    failures = [
        _login(gql, password=WRONG, REMOTE_ADDR=f"203.0.113.{n}")
        for n in range(20)
        for _ in range(5)
    ]

    owner = _login(gql, REMOTE_ADDR="198.51.100.2")
    other_user = _login(gql, "admin@example.com", REMOTE_ADDR="198.51.100.2")

    assert failures == [INVALID_CREDENTIALS] * 100
    assert owner == throttled(3600)
    assert other_user == {"__typename": "AuthPayload", "user": {"email": "admin@example.com"}}


def test_limits_are_settings(gql: GraphQL, settings: Settings, normal_user: Persona) -> None:
    settings.LOGIN_FAILURES_PER_EMAIL_ADDRESS = "2/minute"

    results = [_login(gql, password=WRONG) for _ in range(3)]

    assert _codes(results) == ["invalid_credentials"] * 2 + ["throttled"]
    assert results[2]["messages"][0]["message"].startswith("Too many failed logins. Try again in")


def test_aliased_logins_are_each_counted(gql: GraphQL, normal_user: Persona) -> None:
    calls = " ".join(
        f'a{i}: login(input: {{email: "normal@example.com", password: "{WRONG}"}}) '
        "{ __typename ... on OperationInfo { messages { code } } }"
        for i in range(15)
    )

    body = gql("mutation { " + calls + " }")

    codes = [body["data"][f"a{i}"]["messages"][0]["code"] for i in range(15)]
    assert codes == ["invalid_credentials"] * 5 + ["throttled"] * 10


def test_concurrent_guesses_check_no_more_passwords_than_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ten guesses at once for one email from one address: each guess that reaches the password
    check waits there until every other guess has either reached it too or been throttled, so a
    throttle that only counts after checking would let all ten through."""
    user = User(email="normal@example.com")
    user.set_password(PASSWORD)
    guesses = 10
    arrived = threading.Condition()
    state = {"checking": 0, "throttled": 0}

    def slow_check(self: User, raw_password: str) -> bool:
        with arrived:
            state["checking"] += 1
            arrived.notify_all()
            assert arrived.wait_for(lambda: sum(state.values()) == guesses, timeout=10)
        return False

    def guess() -> str:
        try:
            throttle.password_check(
                user=user, email=user.email, password=WRONG, client_address="203.0.113.66"
            )
        except ValidationError as error:
            with arrived:
                state["throttled"] += 1
                arrived.notify_all()
            return str(error.code)
        return "invalid_credentials"

    monkeypatch.setattr(User, "check_password", slow_check)
    with ThreadPoolExecutor(max_workers=guesses) as pool:
        outcomes = list(pool.map(lambda _: guess(), range(guesses)))

    assert sorted(outcomes) == ["invalid_credentials"] * 5 + ["throttled"] * 5
    assert state == {"checking": 5, "throttled": 5}


# --- userUpdate(currentPassword) -----------------------------------------------------------------

NEW_PASSWORD = "a new long passphrase 7"


def _password_changes(user_id: int, current_passwords: list[str]) -> str:
    calls = " ".join(
        f'a{i}: userUpdate(id: "{user_id}", input: {{password: "{NEW_PASSWORD}", '
        f'currentPassword: "{current}"}}) {{ __typename {OPERATION_INFO} }}'
        for i, current in enumerate(current_passwords)
    )
    return "mutation { " + calls + " }"


def test_current_password_guesses_in_aliases_are_each_counted(
    gql: GraphQL, clock: FakeClock, normal_user: Persona
) -> None:
    assert normal_user.user is not None
    before = db_state()

    body = gql(_password_changes(normal_user.user.pk, [WRONG] * 15), persona=normal_user)
    right_password = gql(_password_changes(normal_user.user.pk, [PASSWORD]), persona=normal_user)

    payloads = [body["data"][f"a{i}"] for i in range(15)]
    assert payloads == [WRONG_CURRENT_PASSWORD] * 5 + [throttled(900)] * 10
    assert right_password == {"data": {"a0": throttled(900)}}
    assert db_state() == before
    assert User.objects.get(pk=normal_user.user.pk).check_password(PASSWORD)


def test_current_password_and_login_share_the_counters(
    gql: GraphQL, clock: FakeClock, normal_user: Persona
) -> None:
    assert normal_user.user is not None
    failed_logins = [_login(gql, password=WRONG) for _ in range(4)]
    before = db_state()

    body = gql(_password_changes(normal_user.user.pk, [WRONG, PASSWORD]), persona=normal_user)

    assert failed_logins == [INVALID_CREDENTIALS] * 4
    assert body == {"data": {"a0": WRONG_CURRENT_PASSWORD, "a1": throttled(900)}}
    assert _login(gql) == throttled(900)
    assert db_state() == before


def test_right_current_password_changes_the_password_and_clears_failures(
    gql: GraphQL, normal_user: Persona
) -> None:
    assert normal_user.user is not None
    failed_logins = [_login(gql, password=WRONG) for _ in range(4)]

    body = gql(_password_changes(normal_user.user.pk, [PASSWORD]), persona=normal_user)

    assert failed_logins == [INVALID_CREDENTIALS] * 4
    assert body == {"data": {"a0": {"__typename": "User"}}}
    assert User.objects.get(pk=normal_user.user.pk).check_password(NEW_PASSWORD)
    after = [_login(gql, password=WRONG) for _ in range(5)]
    assert after == [INVALID_CREDENTIALS] * 5


# --- the admin site ------------------------------------------------------------------------------


@pytest.fixture
def superuser(db: None) -> User:
    return User.objects.create_superuser("root@example.com", PASSWORD)


def _admin_login(client: Client, password: str = PASSWORD, **meta: str) -> int:
    """Post the admin login form; returns the status (302: logged in, 200: form again)."""
    response = client.post(
        "/admin/login/",
        {"username": "root@example.com", "password": password, "next": "/admin/"},
        **meta,  # type: ignore[arg-type]
    )
    return response.status_code


def _has_session(client: Client) -> bool:
    return (
        django_settings.SESSION_COOKIE_NAME in client.cookies and "_auth_user_id" in client.session
    )


def test_admin_login_works_with_the_right_password(superuser: User) -> None:
    client = Client()

    assert _admin_login(client) == 302
    assert _has_session(client)
    assert client.get("/admin/").status_code == 200


def test_admin_login_is_throttled_after_five_wrong_passwords(superuser: User) -> None:
    client = Client()

    failures = [_admin_login(client, WRONG) for _ in range(5)]
    right_password = _admin_login(client)

    assert failures == [200] * 5
    assert right_password == 200
    assert not _has_session(client)
    assert client.get("/admin/").status_code == 302  # to the login page


def test_admin_login_and_graphql_login_share_the_counters(
    gql: GraphQL, clock: FakeClock, superuser: User
) -> None:
    client = Client()
    graphql = [_login(gql, "root@example.com", WRONG) for _ in range(3)]
    admin = [_admin_login(client, WRONG) for _ in range(2)]

    assert graphql == [INVALID_CREDENTIALS] * 3
    assert admin == [200] * 2
    assert _admin_login(client) == 200
    assert not _has_session(client)
    assert _login(gql, "root@example.com") == throttled(900)


def test_graphql_lockout_also_holds_on_the_admin_site(gql: GraphQL, superuser: User) -> None:
    client = Client()
    graphql = [_login(gql, "root@example.com", WRONG) for _ in range(12)]

    assert _codes(graphql) == ["invalid_credentials"] * 5 + ["throttled"] * 7
    assert _admin_login(client) == 200
    assert not _has_session(client)


def test_admin_login_counts_by_the_client_address_behind_proxies(
    settings: Settings, superuser: User
) -> None:
    settings.NUM_PROXIES = 1
    attacker, owner = Client(), Client()

    failures = [
        _admin_login(attacker, WRONG, HTTP_X_FORWARDED_FOR="198.51.100.9, 203.0.113.66")
        for _ in range(5)
    ]
    attacker_right = _admin_login(attacker, HTTP_X_FORWARDED_FOR="198.51.100.9, 203.0.113.66")
    # The same proxy (REMOTE_ADDR) but another client: not throttled.
    owner_right = _admin_login(owner, HTTP_X_FORWARDED_FOR="203.0.113.7")

    assert failures == [200] * 5
    assert attacker_right == 200
    assert owner_right == 302
    assert not _has_session(attacker)
    assert _has_session(owner)


def test_inactive_staff_cannot_log_in_to_the_admin_site(superuser: User) -> None:
    User.objects.filter(pk=superuser.pk).update(is_active=False)
    client = Client()

    assert _admin_login(client) == 200
    assert not _has_session(client)


def test_staff_flag_still_gates_the_admin_site(db: None) -> None:
    make_user("plain@example.com")
    client = Client()

    response = client.post(
        "/admin/login/",
        {"username": "plain@example.com", "password": PASSWORD, "next": "/admin/"},
    )

    assert response.status_code == 200
    assert not _has_session(client)
