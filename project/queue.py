"""The task queue on Redis: huey's priority queue, without task revocation.

Data Pusher never revokes a task: a delivery is stopped in the database (its log's status), and
a lane finds nothing to claim. Huey still reads, before every task it runs, whether the task was
revoked, and deletes the flag after it ran: two Redis round trips per task, and on the spread
drain (1,000 destinations) a lane task runs for nearly every delivery. Revoking raises here
instead of being silently ignored."""

from typing import Any, NoReturn

from huey import PriorityRedisHuey


class Queue(PriorityRedisHuey):
    def is_revoked(self, task: Any, timestamp: Any = None, peek: bool = True) -> bool:
        return False

    def delete(self, key: str) -> Any:
        if key.startswith("r:"):  # Task.revoke_id: never set here
            return False
        return super().delete(key)

    def revoke(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("Data Pusher does not revoke tasks")

    revoke_all = revoke
