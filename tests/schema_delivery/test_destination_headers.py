"""Destination header values (API keys of the receiver, set by an ADMIN) are readable by the
ADMINs of the destination's account and superusers only; everyone else sees the header names
with masked values. Headers are write-only for a NORMAL_USER: an update still replaces them.

The target is the `account` fixture ("Acme"): admin is its ADMIN, normal_user its NORMAL_USER,
outsider administers another account ("Other") only.
"""

from typing import Any

import pytest

from delivery.models import Destination
from identity.auth import token_issue
from identity.models import Account, Membership
from tests.conftest import GraphQL, Persona
from tests.factories import add_member, make_account, make_destination, make_user

HEADERS = {"Authorization": "Bearer receiver-api-key", "X-Tenant": "acme"}
MASKED = {"Authorization": "********", "X-Tenant": "********"}
LIST = "{ destinations { id headers } }"
ONE = "query ($id: ID!) { destination(id: $id) { id headers } }"


@pytest.fixture
def keyed(account: Account) -> Destination:
    return make_destination(account, headers=HEADERS)


@pytest.mark.parametrize(
    ("persona", "headers"),
    [("admin", HEADERS), ("normal_user", MASKED), ("outsider", None), ("anonymous", None)],
)
def test_destination_headers_role_matrix(
    gql: GraphQL,
    personas: dict[str, Persona],
    keyed: Destination,
    persona: str,
    headers: dict[str, str] | None,
) -> None:
    one = gql(ONE, {"id": str(keyed.pk)}, persona=personas[persona])
    many = gql(LIST, persona=personas[persona])

    if headers is None:  # foreign or anonymous: the destination is not there at all
        assert one["data"] == {"destination": None}
        assert many.get("data") in (None, {"destinations": []})
        return
    assert one == {"data": {"destination": {"id": str(keyed.pk), "headers": headers}}}
    assert many == {"data": {"destinations": [{"id": str(keyed.pk), "headers": headers}]}}


def test_headers_are_masked_per_account_by_role_in_one_list(gql: GraphQL, admin: Persona) -> None:
    # Nora is NORMAL_USER of "Acme" and ADMIN of her own account: one list, two answers.
    nora = make_user("nora3@example.com")
    add_member(Account.objects.get(name="Acme"), nora, "NORMAL_USER")
    own, _ = make_account(admin=nora, name="Nora's")
    acme_destination = make_destination(Account.objects.get(name="Acme"), headers=HEADERS)
    own_destination = make_destination(own, headers={"X-Own": "mine"})
    no_headers = make_destination(Account.objects.get(name="Acme"))

    body = gql(LIST, token=token_issue(user=nora))

    assert body == {
        "data": {
            "destinations": [
                {"id": str(acme_destination.pk), "headers": MASKED},
                {"id": str(own_destination.pk), "headers": {"X-Own": "mine"}},
                {"id": str(no_headers.pk), "headers": {}},
            ]
        }
    }


def test_superuser_sees_header_values(gql: GraphQL, keyed: Destination) -> None:
    root = make_user("root2@example.com", is_superuser=True, is_staff=True)

    body = gql(LIST, token=token_issue(user=root))

    assert body == {"data": {"destinations": [{"id": str(keyed.pk), "headers": HEADERS}]}}


def test_a_normal_user_replaces_headers_without_reading_them(
    gql: GraphQL, normal_user: Persona, admin: Persona, keyed: Destination
) -> None:
    update = """mutation ($id: ID!, $input: DestinationUpdateInput!) {
        destinationUpdate(id: $id, input: $input) { ... on Destination { headers } } }"""

    body = gql(
        update,
        {"id": str(keyed.pk), "input": {"headers": {"X-New": "s3cret"}}},
        persona=normal_user,
    )

    keyed.refresh_from_db()
    assert body == {"data": {"destinationUpdate": {"headers": {"X-New": "********"}}}}
    assert keyed.headers == {"X-New": "s3cret"}
    assert gql(ONE, {"id": str(keyed.pk)}, persona=admin)["data"]["destination"]["headers"] == {
        "X-New": "s3cret"
    }


def test_header_values_follow_a_role_change_on_the_next_request(
    gql: GraphQL, normal_user: Persona, keyed: Destination
) -> None:
    before = gql(LIST, persona=normal_user)
    Membership.objects.filter(user=normal_user.user).update(role="ADMIN")
    after = gql(LIST, persona=normal_user)

    assert before == {"data": {"destinations": [{"id": str(keyed.pk), "headers": MASKED}]}}
    assert after == {"data": {"destinations": [{"id": str(keyed.pk), "headers": HEADERS}]}}


@pytest.mark.parametrize("persona", ["admin", "normal_user"])
def test_destinations_headers_query_count_does_not_grow_with_rows(
    gql: GraphQL,
    personas: dict[str, Persona],
    account: Account,
    persona: str,
    django_assert_num_queries: Any,
) -> None:
    query = "{ destinations { id headers signingSecret } }"
    for n in range(5):
        make_destination(account, headers={"X-N": str(n)})
    gql(query, persona=personas[persona])  # warms the token's last_used_at

    # token, destinations, admin account ids
    with django_assert_num_queries(3):
        small = gql(query, persona=personas[persona])
    for n in range(45):
        make_destination(account, headers={"X-N": str(n)})
    with django_assert_num_queries(3):
        large = gql(query, persona=personas[persona])

    assert len(small["data"]["destinations"]) == 5
    values = [str(n) for n in [*range(5), *range(45)]]
    if persona == "normal_user":
        values = ["********"] * 50
    assert [d["headers"] for d in large["data"]["destinations"]] == [{"X-N": v} for v in values]
