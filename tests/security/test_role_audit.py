"""A role-matrix audit generated from the schema: every Query, Mutation and Subscription field,
called by anonymous, outsider, normal_user and admin with arguments that point at the objects
of the admin's account (Acme): the account, its destination, event, log, members and users.

The selection of each call is built from the schema (every field of the result, three levels
deep, every member of a union), so a field added to a type is read by the audit at once. A new
root field fails `test_the_table_covers_exactly_the_schema` until it is classified in AUDIT.

Besides each expected outcome, two rules hold for every call: no answer to anonymous or to the
outsider contains anything of Acme (its id, name, members' emails, destination URL, signing
secret, event id or payload), and no answer to the NORMAL_USER contains the signing secret. A
refused call writes nothing (every row of every table of ours is compared)."""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.apps import apps
from django.utils import timezone
from graphql import (
    GraphQLField,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    build_schema,
    get_named_type,
    is_leaf_type,
    is_non_null_type,
)

from delivery.models import DeliveryAttempt, DeliveryLog, Destination, Event, Notice
from identity import secrets
from identity.models import Account, AuthToken, Invitation, Membership, Role, User
from schema import schema as app_schema
from tests.conftest import GraphQL, Persona, error_codes
from tests.factories import PASSWORD, add_member, make_account, make_user
from tests.live.conftest import connect

SDL: GraphQLSchema = build_schema(app_schema.as_str())
ROOTS = {
    "Query": SDL.query_type,
    "Mutation": SDL.mutation_type,
    "Subscription": SDL.subscription_type,
}
PERSONAS = ["anonymous", "outsider", "normal_user", "admin"]
SELECTION_DEPTH = 3
INVITATION_TOKEN = "dpi_" + "AuditInvitationTokenForInviteeAtExample0000"
EMAIL_TOKEN = "dpv_" + "AuditEmailTokenForTheAdminsPendingChange0000"


# --- The world: Acme and what points at it ------------------------------------------------------


@dataclass
class World:
    acme: Account
    destination: Destination
    event: Event
    log: DeliveryLog
    colleague: Membership  # a NORMAL_USER of Acme other than normal_user
    friend_id: int  # a member of another account the admin administers
    admin_id: int
    markers: list[str]  # strings only Acme's data contains
    secret: str  # the destination's signing secret


@pytest.fixture
def world(personas: dict[str, Persona], account: Account) -> World:
    admin = personas["admin"].user
    assert admin is not None
    colleague = add_member(account, make_user("colleague@example.com"))
    second, _ = make_account(admin=admin, name="Second")
    friend = make_user("friend@example.com")
    add_member(second, friend)
    destination = Destination.objects.create(
        account=account,
        url="http://127.0.0.1:9/acme-hook",
        http_method="POST",
        headers={"X-Acme": "acme-header"},
        signing_secret="whsec_" + "QWNtZVNpZ25pbmdTZWNyZXRGb3JUaGVBdWRpdDEyMzQ=",
    )
    event = Event.objects.create(
        account=account,
        event_id="acme-event-1",
        payload={"acme": "acme-payload"},
        size=30,
        received_at=destination.created_at,
    )
    log = DeliveryLog.objects.create(
        event=event,
        destination=destination,
        account=account,
        status="failed",
        attempt_count=1,
        last_status_code=500,
        last_error="acme-error",
        received_timestamp=event.received_at,
        processed_timestamp=event.received_at,
    )
    DeliveryAttempt.objects.create(
        log=log,
        number=1,
        started_at=event.received_at,
        duration_ms=5,
        status_code=500,
        response_body="acme-response",
    )
    # An invitation of Acme to an address none of the personas has, whose token everyone holds,
    # and a pending email change of the admin.
    Invitation.objects.create(
        account=account,
        email="invitee@example.com",
        role=Role.ADMIN,
        secret_hash=secrets.digest(INVITATION_TOKEN),
        expires_at=timezone.now() + timedelta(days=1),
    )
    User.objects.filter(pk=admin.pk).update(
        pending_email="admin-new@example.com",
        email_secret_hash=secrets.digest(EMAIL_TOKEN),
        email_secret_expires_at=timezone.now() + timedelta(days=1),
    )
    # The outsider's own account has data too: their answers are not empty by accident.
    other = Account.objects.get(name="Other")
    own = Destination.objects.create(
        account=other, url="http://127.0.0.1:9/other", http_method="GET", signing_secret="x"
    )
    own_event = Event.objects.create(
        account=other, event_id="other-1", payload={}, size=2, received_at=event.received_at
    )
    DeliveryLog.objects.create(
        event=own_event,
        destination=own,
        account=other,
        status="failed",
        received_timestamp=event.received_at,
    )
    Notice.objects.create(
        account=account, destination=destination, kind="breaker_opened", detail="acme-notice"
    )
    return World(
        acme=account,
        destination=destination,
        event=event,
        log=log,
        colleague=colleague,
        friend_id=friend.pk,
        admin_id=admin.pk,
        markers=[
            str(account.pk),
            "Acme",
            "admin@example.com",
            "normal@example.com",
            "colleague@example.com",
            "acme-hook",
            "acme-notice",
            "acme-header",
            "acme-event-1",
            "acme-payload",
            "acme-error",
            "acme-response",
            "invitee@example.com",
            "admin-new@example.com",
            destination.signing_secret,
        ],
        secret=destination.signing_secret,
    )


# --- Outcomes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unauthenticated:
    """Queries: a top-level error with code unauthenticated; mutations: OperationInfo."""


@dataclass(frozen=True)
class Refused:
    """A mutation answered with OperationInfo carrying `code`."""

    code: str


@dataclass(frozen=True)
class Null:
    """A query answered null, without error: a foreign id reads as a missing one."""


@dataclass(frozen=True)
class Empty:
    """A list query answered [] (or a connection with no edges and totalCount 0)."""


@dataclass(frozen=True)
class Allowed:
    """The call succeeds: a mutation answers `typename`; `check` inspects the field's data."""

    typename: str | None = None
    check: Callable[[Any, World, Persona], bool] | None = field(default=None, compare=False)
    writes: bool = True  # False: it must not change a row either (e.g. counts 0 retried)


Outcome = Unauthenticated | Refused | Null | Empty | Allowed


def _own_user(data: Any, world: World, persona: Persona) -> bool:
    assert persona.user is not None
    return bool(data["id"] == str(persona.user.pk))


def _ids(data: Any) -> set[str]:
    return {item["id"] for item in data}


def _sees_acme(data: Any, world: World, persona: Persona) -> bool:
    return str(world.acme.pk) in _ids(data)


def _acme_members(data: Any, world: World, persona: Persona) -> bool:
    return len(data) == 3  # admin, normal_user, colleague


def _destination(secret_visible: bool) -> Callable[[Any, World, Persona], bool]:
    def check(data: Any, world: World, persona: Persona) -> bool:
        items = data if isinstance(data, list) else [data]
        expected = world.secret if secret_visible else None
        return [(d["id"], d["signingSecret"]) for d in items] == [
            (str(world.destination.pk), expected)
        ]

    return check


def _acme_log(data: Any, world: World, persona: Persona) -> bool:
    if "edges" in data:
        return data["totalCount"] == 1 and data["edges"][0]["node"]["id"] == str(world.log.pk)
    return bool(data["id"] == str(world.log.pk))


def _acme_notice(data: Any, world: World, persona: Persona) -> bool:
    return [(n["kind"], n["detail"], n["destination"]["id"]) for n in data] == [
        ("BREAKER_OPENED", "acme-notice", str(world.destination.pk))
    ]


def _acme_destination_update(data: Any, world: World, persona: Persona) -> bool:
    return bool(
        data["destination"]["id"] == str(world.destination.pk)
        and _acme_notice([data["notice"]], world, persona)
    )


def _acme_event(data: Any, world: World, persona: Persona) -> bool:
    return bool(data["eventId"] == "acme-event-1")


def _retried(count: int) -> Callable[[Any, World, Persona], bool]:
    return lambda data, world, persona: bool(data["count"] == count)


def _not_acme(data: Any, world: World, persona: Persona) -> bool:
    return bool(data["account"]["id"] != str(world.acme.pk))


UNAUTH = Unauthenticated()
NOT_FOUND = Refused("not_found")
DENIED = Refused("permission_denied")


@dataclass(frozen=True)
class Audit:
    """How to call a root field (its arguments, from the world) and what each persona gets."""

    args: Callable[[World], dict[str, Any]]
    anonymous: Outcome
    outsider: Outcome
    normal_user: Outcome
    admin: Outcome

    def expect(self, persona: str) -> Outcome:
        outcome: Outcome = getattr(self, persona)
        return outcome


def _no_args(world: World) -> dict[str, Any]:
    return {}


def _acme_admin_only(args: Callable[[World], dict[str, Any]], typename: str) -> Audit:
    """A mutation on an object of Acme that only an ADMIN of Acme may make."""
    return Audit(args, UNAUTH, NOT_FOUND, DENIED, Allowed(typename))


NEW_DESTINATION = "http://127.0.0.1:9/new"

AUDIT: dict[str, Audit] = {
    # --- queries ---
    "Query.me": Audit(
        _no_args,
        UNAUTH,
        Allowed(check=_own_user),
        Allowed(check=_own_user),
        Allowed(check=_own_user),
    ),
    "Query.users": Audit(
        lambda w: {"filters": {"email": "admin@example.com"}},
        UNAUTH,
        Empty(),
        Empty(),  # a NORMAL_USER sees only themselves
        Allowed(check=lambda d, w, p: _ids(d) == {str(w.admin_id)}),
    ),
    "Query.accounts": Audit(
        _no_args,
        UNAUTH,
        Allowed(check=lambda d, w, p: len(d) == 1),  # their own only (no marker of Acme)
        Allowed(check=_sees_acme),
        Allowed(check=lambda d, w, p: _sees_acme(d, w, p) and len(d) == 2),  # and Second
    ),
    "Query.account": Audit(
        lambda w: {"id": str(w.acme.pk)},
        UNAUTH,
        Null(),
        Allowed(check=lambda d, w, p: d["id"] == str(w.acme.pk)),
        Allowed(check=lambda d, w, p: d["id"] == str(w.acme.pk)),
    ),
    "Query.members": Audit(
        lambda w: {"accountId": str(w.acme.pk)},
        UNAUTH,
        Empty(),
        Allowed(check=_acme_members),
        Allowed(check=_acme_members),
    ),
    "Query.invitations": Audit(
        lambda w: {"accountId": str(w.acme.pk)},
        UNAUTH,
        Empty(),
        Empty(),  # ADMIN only
        Allowed(check=lambda d, w, p: [i["email"] for i in d] == ["invitee@example.com"]),
    ),
    "Query.destinations": Audit(
        lambda w: {"filters": {"accountId": str(w.acme.pk)}},
        UNAUTH,
        Empty(),
        Allowed(check=_destination(secret_visible=False)),
        Allowed(check=_destination(secret_visible=True)),
    ),
    "Query.destination": Audit(
        lambda w: {"id": str(w.destination.pk)},
        UNAUTH,
        Null(),
        Allowed(check=_destination(secret_visible=False)),
        Allowed(check=_destination(secret_visible=True)),
    ),
    "Query.logs": Audit(
        lambda w: {"filters": {"accountId": str(w.acme.pk)}},
        UNAUTH,
        Empty(),
        Allowed(check=_acme_log),
        Allowed(check=_acme_log),
    ),
    "Query.log": Audit(
        lambda w: {"id": str(w.log.pk)},
        UNAUTH,
        Null(),
        Allowed(check=_acme_log),
        Allowed(check=_acme_log),
    ),
    "Query.notices": Audit(
        lambda w: {"accountId": str(w.acme.pk)},
        UNAUTH,
        Empty(),
        Allowed(check=_acme_notice),
        Allowed(check=_acme_notice),
    ),
    "Query.event": Audit(
        lambda w: {"id": "acme-event-1"},
        UNAUTH,
        Null(),
        Allowed(check=_acme_event),
        Allowed(check=_acme_event),
    ),
    # --- mutations: public ---
    "Mutation.signup": Audit(
        lambda w: {
            "input": {"email": "new@example.com", "password": PASSWORD, "accountName": "New"}
        },
        *[Allowed("AuthPayload")] * 4,
    ),
    "Mutation.login": Audit(  # the admin's email with a wrong password
        lambda w: {"input": {"email": "admin@example.com", "password": "wrong " + PASSWORD}},
        *[Refused("invalid_credentials")] * 4,
    ),
    # --- mutations: the caller's own things ---
    # Holding an invitation's token is not enough: it was sent to an address nobody here has.
    "Mutation.invitationAccept": Audit(
        lambda w: {"token": INVITATION_TOKEN},
        UNAUTH,
        *[Refused("invalid_invitation")] * 3,
    ),
    # The token of the admin's pending email change works for the admin only.
    "Mutation.emailVerify": Audit(
        lambda w: {"token": EMAIL_TOKEN},
        UNAUTH,
        Refused("invalid_verification"),
        Refused("invalid_verification"),
        Allowed("User", lambda d, w, p: d["email"] == "admin-new@example.com"),
    ),
    "Mutation.logout": Audit(_no_args, UNAUTH, Allowed("Done"), Allowed("Done"), Allowed("Done")),
    "Mutation.accountCreate": Audit(
        lambda w: {"input": {"name": "Mine"}},
        UNAUTH,
        Allowed("AccountSecret", _not_acme),
        Allowed("AccountSecret", _not_acme),
        Allowed("AccountSecret", _not_acme),
    ),
    "Mutation.userUpdate": Audit(  # the admin's user
        lambda w: {"id": str(w.admin_id), "input": {"fullName": "Renamed"}},
        UNAUTH,
        NOT_FOUND,
        NOT_FOUND,  # a NORMAL_USER does not see other users
        Allowed("User"),
    ),
    # --- mutations on Acme ---
    "Mutation.accountUpdate": _acme_admin_only(
        lambda w: {"id": str(w.acme.pk), "input": {"name": "Renamed"}}, "Account"
    ),
    "Mutation.accountDelete": _acme_admin_only(lambda w: {"id": str(w.acme.pk)}, "Deleted"),
    "Mutation.accountRotateSecret": _acme_admin_only(
        lambda w: {"id": str(w.acme.pk), "graceSeconds": 60}, "AccountSecret"
    ),
    "Mutation.memberInvite": _acme_admin_only(
        lambda w: {
            "input": {"accountId": str(w.acme.pk), "email": "new@example.com", "role": "ADMIN"}
        },
        "Invitation",
    ),
    "Mutation.invitationRevoke": _acme_admin_only(
        lambda w: {"id": str(w.acme.invitations.get().pk)}, "Deleted"
    ),
    "Mutation.memberAdd": _acme_admin_only(
        lambda w: {
            "input": {"accountId": str(w.acme.pk), "userId": str(w.friend_id), "role": "ADMIN"}
        },
        "Member",
    ),
    "Mutation.memberUpdate": Audit(
        lambda w: {"id": str(w.colleague.pk), "input": {"role": "ADMIN"}},
        UNAUTH,
        NOT_FOUND,
        DENIED,
        Allowed("Member"),
    ),
    "Mutation.memberRemove": Audit(
        lambda w: {"id": str(w.colleague.pk)},
        UNAUTH,
        NOT_FOUND,
        DENIED,
        Allowed("Deleted"),
    ),
    "Mutation.destinationCreate": Audit(
        lambda w: {
            "input": {"accountId": str(w.acme.pk), "url": NEW_DESTINATION, "httpMethod": "POST"}
        },
        UNAUTH,
        NOT_FOUND,
        DENIED,
        Allowed("Destination"),
    ),
    "Mutation.destinationUpdate": Audit(  # NORMAL_USERs may update destinations
        lambda w: {"id": str(w.destination.pk), "input": {"url": NEW_DESTINATION}},
        UNAUTH,
        NOT_FOUND,
        Allowed("Destination", lambda d, w, p: d["signingSecret"] is None),
        Allowed("Destination", lambda d, w, p: d["signingSecret"] == w.secret),
    ),
    "Mutation.destinationDelete": _acme_admin_only(
        lambda w: {"id": str(w.destination.pk)}, "Deleted"
    ),
    "Mutation.destinationEnable": Audit(  # the destination is active: nothing to change
        lambda w: {"id": str(w.destination.pk)},
        UNAUTH,
        NOT_FOUND,
        DENIED,
        Allowed("Destination", writes=False),
    ),
    "Mutation.destinationRotateSecret": _acme_admin_only(
        lambda w: {"id": str(w.destination.pk)}, "Destination"
    ),
    "Mutation.logRetry": _acme_admin_only(lambda w: {"id": str(w.log.pk)}, "DeliveryLog"),
    "Mutation.logsRetryFailed": Audit(  # counts only what the caller administers
        lambda w: {"filters": {"accountId": str(w.acme.pk)}},
        UNAUTH,
        Allowed("LogsRetryResult", _retried(0), writes=False),
        Allowed("LogsRetryResult", _retried(0), writes=False),
        Allowed("LogsRetryResult", _retried(1)),
    ),
    # --- subscriptions (over WebSocket; anonymous is refused at connection_init) ---
    "Subscription.destinationUpdates": Audit(  # the catch-up shows Acme's notice
        lambda w: {"accountId": str(w.acme.pk), "since": "2000-01-01T00:00:00+00:00"},
        UNAUTH,
        NOT_FOUND,
        Allowed(check=_acme_destination_update),
        Allowed(check=_acme_destination_update),
    ),
    "Subscription.logUpdates": Audit(
        lambda w: {"accountId": str(w.acme.pk), "since": "2000-01-01T00:00:00+00:00"},
        UNAUTH,
        NOT_FOUND,
        Allowed(check=_acme_log),
        Allowed(check=_acme_log),
    ),
}
PUBLIC = {"Mutation.signup", "Mutation.login"}


def schema_fields() -> dict[str, GraphQLField]:
    return {
        f"{root}.{name}": graphql_field
        for root, type_ in ROOTS.items()
        if type_ is not None
        for name, graphql_field in type_.fields.items()
    }


# --- The table itself ---------------------------------------------------------------------------


def test_the_table_covers_exactly_the_schema() -> None:
    assert sorted(AUDIT) == sorted(schema_fields())


def test_the_table_never_lets_anonymous_or_outsider_at_acme() -> None:
    for name, audit in AUDIT.items():
        if name not in PUBLIC:
            assert audit.anonymous == UNAUTH, name
        outsider = audit.outsider
        # The outsider may only get nothing, a refusal, or something of their own.
        assert isinstance(outsider, Null | Empty | Refused | Allowed), name
        if isinstance(outsider, Refused):
            assert outsider.code in {
                "not_found",
                "invalid_credentials",
                "invalid_invitation",
                "invalid_verification",
            }, name


def test_every_admin_only_mutation_is_refused_to_normal_user_as_permission_denied() -> None:
    # The schema's descriptions state the required role: "… . ADMIN. …" means ADMIN only.
    admin_only = {
        name
        for name, field_ in schema_fields().items()
        if name.startswith("Mutation.") and re.search(r"(^|\. )ADMIN\.", field_.description or "")
    }
    assert len(admin_only) >= 10, sorted(admin_only)
    for name in admin_only:
        assert AUDIT[name].normal_user == DENIED, name


# --- Building the operation from the schema -----------------------------------------------------


def selection(type_: Any, depth: int) -> str:
    named = get_named_type(type_)
    if is_leaf_type(named):
        return ""
    if isinstance(named, GraphQLUnionType):
        members = " ".join(f"... on {m.name} {selection(m, depth)}" for m in named.types)
        return "{ __typename " + members + " }"
    assert isinstance(named, GraphQLObjectType)
    parts = ["__typename"]
    for name, child in named.fields.items():
        if any(is_non_null_type(arg.type) for arg in child.args.values()):
            continue
        if is_leaf_type(get_named_type(child.type)):
            parts.append(name)
        elif depth < SELECTION_DEPTH:
            parts.append(name + " " + selection(child.type, depth + 1))
    return "{ " + " ".join(parts) + " }"


def operation(name: str, variables: dict[str, Any]) -> str:
    root, field_name = name.split(".")
    graphql_field = schema_fields()[name]
    unknown = set(variables) - set(graphql_field.args)
    assert not unknown, f"{name} has no arguments {unknown}"
    missing = [
        arg
        for arg, spec in graphql_field.args.items()
        if is_non_null_type(spec.type) and spec.default_value is None and arg not in variables
    ]
    assert not missing, f"classify the arguments {missing} of {name} in AUDIT"
    declared = ", ".join(f"${arg}: {graphql_field.args[arg].type}" for arg in variables)
    passed = ", ".join(f"{arg}: ${arg}" for arg in variables)
    return (
        f"{root.lower()}{f' ({declared})' if declared else ''} "
        f"{{ {field_name}{f'({passed})' if passed else ''} {selection(graphql_field.type, 1)} }}"
    )


# --- Running the audit --------------------------------------------------------------------------


def db_rows() -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of ours (a token's last_used_at moves on any call)."""
    rows = {}
    for label in ("identity", "delivery"):
        for model in apps.get_app_config(label).get_models():
            values = model.objects.order_by("pk")
            if model is AuthToken:
                rows[model.__name__] = list(
                    values.values_list("pk", "user_id", "key_hash", "expires_at")
                )
            else:
                rows[model.__name__] = list(values.values_list())
    return rows


def assert_no_leak(name: str, persona: str, text: str, world: World) -> None:
    if persona in ("anonymous", "outsider"):
        leaked = [marker for marker in world.markers if marker in text]
        assert not leaked, f"{name} shows {persona} {leaked} of Acme: {text}"
    if persona == "normal_user":
        assert world.secret not in text, f"{name} shows normal_user the signing secret"


def assert_outcome(
    name: str, outcome: Outcome, body: dict[str, Any], world: World, persona: Persona
) -> None:
    field_name = name.split(".")[1]
    data = (body.get("data") or {}).get(field_name)
    is_mutation = name.startswith("Mutation.")
    context = f"{name} as {persona.name}: {json.dumps(body)[:600]}"
    if isinstance(outcome, Unauthenticated) and not is_mutation:
        assert error_codes(body) == ["unauthenticated"], context
        assert data is None, context
        return
    assert "errors" not in body, context
    if isinstance(outcome, Unauthenticated | Refused):
        code = "unauthenticated" if isinstance(outcome, Unauthenticated) else outcome.code
        assert data["__typename"] == "OperationInfo", context
        assert [m["code"] for m in data["messages"]] == [code], context
    elif isinstance(outcome, Null):
        assert data is None, context
    elif isinstance(outcome, Empty):
        connection_empty = isinstance(data, dict) and (data["totalCount"], data["edges"]) == (0, [])
        assert data == [] or connection_empty, context
    else:
        assert data is not None, context
        if outcome.typename is not None:
            assert data["__typename"] == outcome.typename, context
        if outcome.check is not None:
            assert outcome.check(data, world, persona), context


QUERIES_AND_MUTATIONS = [name for name in AUDIT if not name.startswith("Subscription.")]
SUBSCRIPTIONS = [name for name in AUDIT if name.startswith("Subscription.")]


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("name", QUERIES_AND_MUTATIONS)
def test_role_matrix_audit(
    gql: GraphQL, personas: dict[str, Persona], world: World, name: str, persona: str
) -> None:
    audit = AUDIT[name]
    outcome = audit.expect(persona)
    query = operation(name, audit.args(world))
    before = db_rows()

    response = gql.client.post(
        "/graphql/",
        {"query": query, "variables": audit.args(world)},
        content_type="application/json",
        headers={"Authorization": f"Bearer {personas[persona].token}"}
        if personas[persona].token
        else {},
    )

    assert response.status_code == 200
    text = response.content.decode()
    assert_no_leak(name, persona, text, world)
    assert_outcome(name, outcome, response.json(), world, personas[persona])
    if not isinstance(outcome, Allowed) or not outcome.writes:
        assert db_rows() == before, f"{name} as {persona} wrote something"


# --- Subscriptions, over the real ASGI application -----------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", SUBSCRIPTIONS)
@pytest.mark.parametrize("persona", PERSONAS)
async def test_subscription_role_matrix_audit(
    personas: dict[str, Persona], world: World, persona: str, name: str
) -> None:
    from django.db import connections

    audit = AUDIT[name]
    outcome = audit.expect(persona)
    client, connected, _ = await connect()
    assert connected
    try:
        if isinstance(outcome, Unauthenticated):
            await client.send({"type": "connection_init", "payload": {"authToken": None}})
            closed = await client.communicator.receive_output(timeout=5)
            assert closed == {
                "type": "websocket.close",
                "code": 4401,
                "reason": "Invalid, expired or revoked token",
            }
            return
        ack = await client.init(personas[persona].token)
        assert ack == {"type": "connection_ack"}
        variables = audit.args(world)
        op_id = await client.subscribe(operation(name, variables), variables)
        message = await client.receive()
        text = json.dumps(message)
        assert_no_leak(name, persona, text, world)
        assert message["id"] == op_id
        if isinstance(outcome, Refused):
            assert message["type"] == "next", message
            codes = [e["extensions"]["code"] for e in message["payload"]["errors"]]
            assert codes == [outcome.code], message
            assert (await client.receive())["type"] == "complete"
        else:
            assert isinstance(outcome, Allowed)
            assert message["type"] == "next", message
            data = message["payload"]["data"][name.split(".")[1]]
            assert outcome.check is not None
            assert outcome.check(data, world, personas[persona]), message
    finally:
        await client.close()
        await sync_to_async(connections.close_all)()


def test_roles_are_as_the_audit_assumes(world: World, personas: dict[str, Persona]) -> None:
    roles = dict(Membership.objects.filter(account=world.acme).values_list("user__email", "role"))
    assert roles == {
        "admin@example.com": Role.ADMIN,
        "normal@example.com": Role.NORMAL_USER,
        "colleague@example.com": Role.NORMAL_USER,
    }
