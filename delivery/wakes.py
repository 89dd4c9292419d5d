"""The workers' side of `ingest.wake_by_notify`: one thread per worker process LISTENs on
`ingest.WAKE_CHANNEL` and hands the account ids it is told about to a callback (the task
layer's `wake_accounts`: a wake flag, and one enqueue when none is pending).

Notifications are handled in batches (all that one read from the socket brought, each account
once per batch), so a busy account costs a cache round trip per batch, not per event. A
notification sent while no listener is connected is lost: on every (re)connect, before
waiting, the listener wakes every account that has events pending their fan-out. The listen
connection is a direct one (LISTEN needs a session: not through a transaction-mode pooler)."""

import logging
import threading
from collections.abc import Callable

import psycopg
from django.db import close_old_connections, connection, connections

from delivery import ingest
from delivery.models import Event

logger = logging.getLogger(__name__)

WAIT_SECONDS = 5.0  # a wait for notifications ends this often (to notice `stop`)
RETRY_SECONDS = 1.0  # after a lost connection

Wake = Callable[[set[str]], None]


def pending_accounts() -> set[str]:
    """The accounts with events pending their fan-out (the partial index `event_pending`)."""
    ids = Event.objects.filter(fanned_out_at__isnull=True).values_list("account_id", flat=True)
    return {str(account_id) for account_id in ids.distinct()}


def listen(wake: Wake, stop: threading.Event, *, ready: threading.Event | None = None) -> None:
    """Until `stop` is set: LISTEN, wake the accounts pending already, then wake each batch of
    notified accounts. `ready` is set once the listener waits (tests)."""
    while not stop.is_set():
        try:
            params = connections["default"].get_connection_params()
            with psycopg.connect(**params, autocommit=True) as listener:
                listener.execute(f"LISTEN {ingest.WAKE_CHANNEL}")
                pending = pending_accounts()
                connection.close()  # the only query here: hold no connection while listening
                wake(pending)
                if ready is not None:
                    ready.set()
                while not stop.is_set():
                    # One packet's notifications at a time (psycopg yields all it read).
                    accounts = {
                        n.payload for n in listener.notifies(timeout=WAIT_SECONDS, stop_after=1)
                    }
                    if accounts:
                        wake(accounts)
        except Exception:
            logger.exception(
                "Wake listener: connection lost; listening again in %ss", RETRY_SECONDS
            )
            close_old_connections()
            stop.wait(RETRY_SECONDS)


def start(wake: Wake) -> threading.Event:
    """Run `listen` in a daemon thread of this process; returns the event that stops it."""
    stop = threading.Event()
    threading.Thread(target=listen, args=(wake, stop), name="wake-listener", daemon=True).start()
    return stop
