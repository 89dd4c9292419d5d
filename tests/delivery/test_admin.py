"""The admin of destinations, events, logs and notices: every page renders with its search and
filters; destination writes go through the same checks and effects as GraphQL (a refused one
writes nothing); the record of deliveries is read-only; "Deliver again" requeues and wakes."""

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from django.test import Client
from django.test.utils import override_settings

from delivery.models import DeliveryLog, Destination, Event, Notice, NoticeKind
from identity.models import Account, User
from tests.factories import make_attempt, make_destination, make_event, make_log, make_user

AfterCommit = Callable[..., AbstractContextManager[list[Any]]]


@pytest.fixture
def staff(db: None) -> Client:
    client = Client()
    client.force_login(make_user("root@example.com", is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def record(account: Account) -> DeliveryLog:
    destination = make_destination(account, "https://hooks.example.com/orders")
    log = make_log(make_event(account, "evt-admin-1"), destination, "failed", attempt_count=1)
    make_attempt(log, 1, status_code=503, response_body="upstream down", error_class="HTTP")
    Notice.objects.create(
        account=account, destination=destination, kind=NoticeKind.DISABLED, detail="by hand"
    )
    return log


@pytest.mark.parametrize(
    "page",
    [
        "destination/?q=hooks.example.com&is_active__exact=1",
        "event/?q=evt-admin-1",
        "deliverylog/?q=evt-admin-1&status__exact=failed",
        "notice/?kind__exact=disabled",
    ],
)
def test_each_change_list_finds_the_record(staff: Client, record: DeliveryLog, page: str) -> None:
    response = staff.get(f"/admin/delivery/{page}")

    assert response.status_code == 200
    assert response.context["cl"].result_count == 1


def test_a_log_page_shows_its_attempts_and_cannot_be_changed(
    staff: Client, record: DeliveryLog
) -> None:
    page = staff.get(f"/admin/delivery/deliverylog/{record.pk}/change/")
    posted = staff.post(f"/admin/delivery/deliverylog/{record.pk}/change/", {"status": "success"})

    assert page.status_code == 200
    assert "upstream down" in page.text
    assert "503" in page.text
    assert 'name="_save"' not in page.text
    assert posted.status_code == 403
    assert DeliveryLog.objects.get(pk=record.pk).status == "failed"


@pytest.mark.parametrize("model", ["event", "deliverylog", "notice"])
def test_the_record_cannot_be_added_or_deleted(
    staff: Client, record: DeliveryLog, model: str
) -> None:
    pk = {"event": record.event_id, "deliverylog": record.pk, "notice": Notice.objects.get().pk}
    counts = (Event.objects.count(), DeliveryLog.objects.count(), Notice.objects.count())

    assert staff.get(f"/admin/delivery/{model}/add/").status_code == 403
    assert (
        staff.post(f"/admin/delivery/{model}/{pk[model]}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert (Event.objects.count(), DeliveryLog.objects.count(), Notice.objects.count()) == counts


def _form(account: Account | None, **values: object) -> dict[str, object]:
    """The destination form's fields; `account` None for a change (it is read-only there)."""
    form: dict[str, object] = {
        "account": None if account is None else str(account.pk),
        "url": "https://hooks.example.com/new",
        "http_method": "POST",
        "headers": "{}",
        "is_active": "on",
        "max_in_flight": "",
        "rate_limit": "",
    }
    form.update(values)
    return {k: v for k, v in form.items() if v is not None}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"url": "http://127.0.0.1:9/hook"}, "private"),
        ({"headers": '{"Host": "x"}'}, "Host"),
        ({"rate_limit": "1000000"}, "1 to 10000 requests per second"),
    ],
)
def test_a_destination_the_api_would_refuse_is_refused_and_nothing_is_written(
    staff: Client, account: Account, settings: Any, values: dict[str, object], message: str
) -> None:
    settings.DELIVERY_ALLOW_PRIVATE_NETWORKS = False  # as in production
    response = staff.post("/admin/delivery/destination/add/", _form(account, **values))

    assert response.status_code == 200  # the form again, with the error
    errors = " ".join(str(e) for e in response.context["adminform"].form.errors.values())
    assert message.lower() in errors.lower()
    assert Destination.objects.count() == 0


def test_a_destination_added_here_gets_a_secret_and_its_creator(
    staff: Client, account: Account
) -> None:
    response = staff.post(
        "/admin/delivery/destination/add/", _form(account, headers='{"X-Key": "k1"}')
    )

    assert response.status_code == 302
    destination = Destination.objects.get()
    assert destination.url == "https://hooks.example.com/new"
    assert destination.headers == {"X-Key": "k1"}
    assert destination.signing_secret.startswith("whsec_")
    assert destination.created_by == User.objects.get(email="root@example.com")
    assert destination.max_in_flight is None
    assert destination.rate_limit is None


@pytest.mark.parametrize("active", [True, False])
def test_switching_a_destination_here_records_a_notice_and_wakes_its_lane(
    staff: Client,
    account: Account,
    django_capture_on_commit_callbacks: AfterCommit,
    enqueued: list[Any],
    real_queue: Any,
    active: bool,
) -> None:
    """Disabled: its waiting logs fail in the lane; enabled: the lane sends them."""
    destination = make_destination(account, "https://hooks.example.com/orders", is_active=active)
    form = _form(None, url=destination.url, is_active="" if active else "on")

    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(f"/admin/delivery/destination/{destination.pk}/change/", form)
    destination.refresh_from_db()
    notice = Notice.objects.get()

    assert response.status_code == 302
    assert destination.is_active is not active
    if active:
        assert destination.disabled_cause == "user"
        assert (notice.kind, notice.detail) == ("disabled", "Disabled by root@example.com.")
    else:
        assert destination.disabled_cause == ""
        assert notice.kind == "enabled"
    assert [t.name for t in enqueued] == ["lane"]


def test_deleting_here_fails_the_unsent_logs_and_keeps_them(
    staff: Client, account: Account
) -> None:
    destination = make_destination(account, "https://hooks.example.com/orders")
    log = make_log(make_event(account), destination, "queued")

    response = staff.post(f"/admin/delivery/destination/{destination.pk}/delete/", {"post": "yes"})
    log.refresh_from_db()

    assert response.status_code == 302
    assert not Destination.objects.exists()
    assert (log.status, log.destination_id, log.last_error) == (
        "failed",
        None,
        "Destination deleted.",
    )


def test_deliver_again_requeues_the_failed_log_and_wakes_its_lane(
    staff: Client,
    record: DeliveryLog,
    django_capture_on_commit_callbacks: AfterCommit,
    enqueued: list[Any],
    real_queue: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            "/admin/delivery/deliverylog/",
            {"action": "deliver_again", "_selected_action": [str(record.pk)]},
            follow=True,
        )
    record.refresh_from_db()

    assert response.status_code == 200
    assert "1 queued again." in response.text
    assert record.status == "queued"
    assert [t.name for t in enqueued] == ["lane"]


@override_settings(DEBUG=False)
def test_a_non_staff_user_gets_the_login_page(db: None, record: DeliveryLog) -> None:
    client = Client()
    client.force_login(make_user("plain@example.com"))

    response = client.get("/admin/delivery/deliverylog/")

    assert response.status_code == 302
    assert response.url.startswith("/admin/login/")
