"""The live side's re-checks are batched: every token and every access asked about in the same
moment is answered by one load (schema.context.Recent), from loaders that read many users at
once and answer exactly as their one-user versions and the permission policy do."""

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from delivery import selectors
from identity import secrets
from identity.auth import token_issue, token_user, token_users
from identity.models import AuthToken, Role
from identity.permissions import Action, account_ids
from schema.context import Recent
from tests.factories import add_member, make_account, make_user


async def test_keys_asked_together_are_loaded_in_one_call_and_kept_for_the_window() -> None:
    calls: list[list[int]] = []

    async def load(keys: list[int]) -> dict[int, int]:
        calls.append(sorted(keys))
        return {k: k * 10 for k in keys}

    recent: Recent[int, int] = Recent(load)

    first = await asyncio.gather(*(recent.get(k) for k in range(50)))
    again = await asyncio.gather(*(recent.get(k) for k in (3, 7)))

    assert first == [k * 10 for k in range(50)]
    assert again == [30, 70]
    assert calls == [list(range(50))]


async def test_a_failed_load_fails_its_callers_and_is_not_kept() -> None:
    outcomes = iter([RuntimeError("database down"), None])

    async def load(keys: list[str]) -> dict[str, str]:
        error = next(outcomes)
        if error is not None:
            raise error
        return {k: k.upper() for k in keys}

    recent: Recent[str, str] = Recent(load)

    with pytest.raises(RuntimeError, match="database down"):
        await recent.get("a")
    assert await recent.get("a") == "A"


class Source:
    """A loader over a dict that can change, recording each call's keys."""

    def __init__(self) -> None:
        self.values = {"a": 1, "b": 2}
        self.calls: list[list[str]] = []
        self.failing = False

    async def load(self, keys: list[str]) -> dict[str, int]:
        self.calls.append(sorted(keys))
        if self.failing:
            raise RuntimeError("database down")
        return {k: self.values[k] for k in keys}


async def test_keys_asked_for_are_reloaded_ahead_so_callers_do_not_wait(settings: Any) -> None:
    settings.LIVE_RECHECK_SECONDS = 0.2  # answers at most 0.1 s old, refreshed every 0.05 s
    source = Source()
    recent: Recent[str, int] = Recent(source.load)
    assert await asyncio.gather(recent.get("a"), recent.get("b")) == [1, 2]
    source.values["a"] = 10

    waited = []
    for _ in range(12):  # 0.3 s of asking, as streams on their ticks do
        await asyncio.sleep(0.025)
        task = asyncio.ensure_future(recent.get("a"))
        await asyncio.sleep(0)  # one step: a fresh answer is there without a load of its own
        waited.append(not task.done())
        assert await task in (1, 10)

    assert waited == [False] * 12
    assert await recent.get("a") == 10
    # The first call, then one refresh of both keys per half interval while "a" is asked for;
    # "b", not asked for since, has left the refreshes.
    assert source.calls[0] == ["a", "b"]
    assert 4 <= len(source.calls) <= 8
    assert source.calls[-1] == ["a"]


async def test_an_answer_is_never_older_than_the_interval(settings: Any) -> None:
    settings.LIVE_RECHECK_SECONDS = 0.2
    source = Source()
    recent: Recent[str, int] = Recent(source.load)
    assert await recent.get("a") == 1

    source.failing = True  # the refreshes fail: the answer ages out, then the callers' own fail
    await asyncio.sleep(0.15)
    with pytest.raises(RuntimeError, match="database down"):
        await recent.get("a")

    source.failing = False
    source.values["a"] = 3
    assert await recent.get("a") == 3


async def test_refreshing_stops_once_nothing_is_asked_for(settings: Any) -> None:
    settings.LIVE_RECHECK_SECONDS = 0.2
    source = Source()
    recent: Recent[str, int] = Recent(source.load)
    assert await recent.get("a") == 1
    await asyncio.sleep(0.4)
    calls = len(source.calls)

    await asyncio.sleep(0.2)

    assert len(source.calls) == calls
    # The first load and the refreshes of two intervals (0.2 s, one every 0.05 s) at most.
    assert 2 <= calls <= 5


@pytest.mark.django_db
def test_token_users_answers_as_token_user_for_each_token() -> None:
    active = make_user()
    inactive = make_user(is_active=False)
    raws = {
        "valid": token_issue(user=active),
        "inactive": token_issue(user=inactive),
        "expired": token_issue(user=active),
        "unknown": "dpu_not-a-token",
    }
    AuthToken.objects.filter(key_hash=secrets.digest(raws["expired"])).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    digests = {name: secrets.digest(raw) for name, raw in raws.items()}

    found = token_users(list(digests.values()))

    assert {name: found[d] for name, d in digests.items()} == {
        name: token_user(raw) for name, raw in raws.items()
    }
    assert found[digests["valid"]] == active
    assert [found[digests[n]] for n in ("inactive", "expired", "unknown")] == [None] * 3


@pytest.mark.django_db
def test_viewable_account_ids_many_answers_as_the_permission_policy_for_each_key() -> None:
    admin, normal, outsider = make_user(), make_user(), make_user()
    root = make_user(is_superuser=True)
    first, _ = make_account(admin=admin)
    second, _ = make_account(admin=admin)
    add_member(first, normal, Role.NORMAL_USER)
    keys: list[Any] = [
        (user.pk, user.is_superuser, account, action)
        for user in (admin, normal, outsider, root)
        for account in (None, str(first.pk), str(second.pk), "not-a-uuid")
        for action in (Action.LOG_VIEW, Action.LOG_RETRY)
    ]
    users = {u.pk: u for u in (admin, normal, outsider, root)}

    many = selectors.viewable_account_ids_many(keys)

    def policy(key: Any) -> frozenset[str]:
        """What the permission policy's own query allows, narrowed to the account asked."""
        allowed = {
            str(pk) for pk in account_ids(users[key[0]], key[3]).values_list("pk", flat=True)
        }
        return frozenset(allowed if key[2] is None else allowed & {key[2]})

    assert many == {key: policy(key) for key in keys}
    assert many[(normal.pk, False, None, Action.LOG_VIEW)] == {str(first.pk)}
    assert many[(normal.pk, False, None, Action.LOG_RETRY)] == frozenset()
