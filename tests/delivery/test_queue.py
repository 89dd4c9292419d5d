"""The queue on Redis (project/queue.py): running a task costs no revocation round trips, and
revoking is refused rather than silently ignored."""

from typing import Any

import pytest
from django.conf import settings

from project.queue import Queue

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs a real Redis"),
]


@pytest.fixture
def queue() -> Any:
    queue = Queue(f"{settings.TEST_RUN_ID}-queue", url=settings.REDIS_URL, results=False)
    yield queue
    queue.flush()


def test_a_task_runs_without_reading_or_clearing_revocation_flags(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[int] = []
    touched: list[str] = []

    @queue.task()
    def job(n: int) -> None:
        ran.append(n)

    for name in ("peek_data", "peek_many", "delete_data", "pop_data"):
        original = getattr(queue.storage, name)

        def spy(*args: Any, _name: str = name, _original: Any = original) -> Any:
            touched.append(_name)
            return _original(*args)

        monkeypatch.setattr(queue.storage, name, spy)

    job(7)
    task = queue.dequeue()
    assert task is not None
    queue.execute(task)

    assert ran == [7]
    assert touched == []


def test_revoking_is_refused(queue: Queue) -> None:
    @queue.task()
    def job() -> None: ...

    with pytest.raises(NotImplementedError):
        job.revoke()
    with pytest.raises(NotImplementedError):
        queue.revoke_by_id("some-id")
