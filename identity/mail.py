"""The mails identity sends: invitations and email verification tokens.

They go through Django's email backend (`EMAIL_BACKEND`: the console in development, SMTP in
production, an in-memory outbox in tests). Each mail carries a raw single-use secret that exists
nowhere else (only its digest is stored), so it is sent in this process once the transaction
that stored the digest commits, never through the queue, whose storage would keep the secret.
A failed send is logged and the committed change stays; asking again (re-inviting, requesting
the email change again) issues a new secret and a new mail.

The links are for people: a frontend at `PUBLIC_URL` reads the token and calls the mutation
(`invitationAccept`, `emailVerify`). The API itself never accepts tokens in URLs.
"""

import logging
from datetime import datetime
from urllib.parse import urlencode

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction

logger = logging.getLogger("datapusher.mail")


def _link(path: str, token: str) -> str:
    # In the fragment: browsers never send it to a server, so no access log keeps the secret.
    return f"{settings.PUBLIC_URL}{path}#{urlencode({'token': token})}"


def _send_after_commit(*, to: str, subject: str, body: str) -> None:
    def send() -> None:
        try:
            send_mail(subject, body, None, [to])
        except Exception:
            logger.exception("Could not send the mail %r", subject)

    transaction.on_commit(send)


def invitation_send(
    *, to: str, account_name: str, role_label: str, token: str, expires_at: datetime
) -> None:
    """Mail an invitation's secret to `to` after commit. The text is the same whether or not
    the address belongs to a user (the inviter learns nothing from it either)."""
    _send_after_commit(
        to=to,
        subject=f"You are invited to {account_name} on Data Pusher",
        body=(
            f"You are invited to join the account {account_name} on Data Pusher as "
            f"{role_label}.\n\n"
            f"To accept, sign up or log in with this address ({to}) and open:\n\n"
            f"  {_link('/invitations/accept', token)}\n\n"
            f"or give your client this invitation token:\n\n  {token}\n\n"
            f"It can be used once, until {expires_at:%Y-%m-%d %H:%M} UTC. If you did not "
            "expect this invitation, ignore this mail.\n"
        ),
    )


def email_verification_send(*, to: str, token: str, expires_at: datetime, new: bool) -> None:
    """Mail an email verification token to `to` after commit; `new` when it confirms a
    change of address rather than the address a user signed up with."""
    what = "new email address" if new else "email address"
    _send_after_commit(
        to=to,
        subject=f"Confirm your {what} for Data Pusher",
        body=(
            f"To confirm that {to} is your {what} on Data Pusher, open:\n\n"
            f"  {_link('/email/verify', token)}\n\n"
            f"or give your client this verification token:\n\n  {token}\n\n"
            f"It can be used once, until {expires_at:%Y-%m-%d %H:%M} UTC. If you did not ask "
            "for this, ignore this mail" + (": your address stays as it is.\n" if new else ".\n")
        ),
    )
