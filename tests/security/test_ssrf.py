"""SSRF: with DELIVERY_ALLOW_PRIVATE_NETWORKS off, no destination may point at a private,
loopback, link-local, shared (CGNAT), unspecified or IPv4-mapped address — neither as a literal
nor through a DNS name — and this holds twice: `destinationCreate`/`destinationUpdate` refuse it
(`invalid_url`), and a delivery to such a destination already stored fails as `BlockedAddress`
without any connection being attempted.

What tests/delivery/test_transport.py and test_deliver.py cover already (the classification of
addresses, `localhost` and 127.0.0.1 at delivery time, DNS rebinding caught on the socket, an
unresolvable name) is not repeated. Fake DNS answers come from a patched `socket.getaddrinfo`;
no test here sends a packet anywhere: connecting at all fails the test."""

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3.util.connection
from django.test import override_settings

from delivery import engine, transport
from delivery.models import DeliveryAttempt, Destination, LogStatus
from identity.models import Account
from tests.conftest import GraphQL, Persona
from tests.delivery.conftest import due_log

pytestmark = pytest.mark.usefixtures("private_networks_off", "fake_dns", "no_connections")

REFUSED = "Private, loopback and link-local destinations are not allowed."
# Names that resolve (through the fake resolver below) to addresses deliveries may not reach.
FAKE_DNS = {
    "internal.example.test": ["10.0.0.5"],
    "mapped.example.test": ["::ffff:10.0.0.5"],
    "metadata.example.test": ["169.254.169.254"],
    "mixed.example.test": ["93.184.216.34", "10.0.0.5"],  # one bad answer is enough
}
BLOCKED_HOSTS = [
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "127.0.0.1",
    "0.0.0.0",
    "169.254.169.254",
    "100.64.0.1",  # shared address space (CGNAT), 100.64.0.0/10
    "100.127.255.254",
    "[::1]",
    "[::]",
    "[fe80::1]",
    "[fc00::1]",
    "[::ffff:10.0.0.1]",
    "[::ffff:127.0.0.1]",
    "localhost",
    "LOCALHOST",
    *FAKE_DNS,
]


@pytest.fixture
def private_networks_off() -> Iterator[None]:
    with override_settings(DELIVERY_ALLOW_PRIVATE_NETWORKS=False):
        yield


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name in FAKE_DNS:
            return [
                (
                    socket.AF_INET6 if ":" in address else socket.AF_INET,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                    "",
                    (address, port),
                )
                for address in FAKE_DNS[name]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Fail any attempt to open a connection (urllib3's and the socket module's)."""
    attempts: list[Any] = []

    def refuse(address: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(address)
        raise AssertionError(f"a connection to {address} was attempted")

    monkeypatch.setattr(urllib3.util.connection, "create_connection", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


CREATE = """mutation ($input: DestinationCreateInput!) { destinationCreate(input: $input) {
  __typename ... on OperationInfo { messages { code field message } } } }"""
UPDATE = """mutation ($id: ID!, $input: DestinationUpdateInput!) {
  destinationUpdate(id: $id, input: $input) {
  __typename ... on Destination { url } ... on OperationInfo { messages { code field message } }
} }"""


def refusal(message: str = REFUSED) -> dict[str, Any]:
    return {
        "__typename": "OperationInfo",
        "messages": [{"code": "invalid_url", "field": "url", "message": message}],
    }


@pytest.mark.parametrize("host", BLOCKED_HOSTS)
def test_destination_create_refuses_a_blocked_host(
    gql: GraphQL, admin: Persona, account: Account, host: str
) -> None:
    body = gql(
        CREATE,
        {
            "input": {
                "accountId": str(account.pk),
                "url": f"http://{host}:8080/hook",
                "httpMethod": "POST",
            }
        },
        persona=admin,
    )

    assert body == {"data": {"destinationCreate": refusal()}}
    assert not Destination.objects.exists()


@pytest.mark.parametrize("host", ["[::ffff:10.0.0.1]", "internal.example.test"])
def test_destination_update_refuses_a_blocked_host(
    gql: GraphQL, admin: Persona, account: Account, host: str
) -> None:
    destination = Destination.objects.create(
        account=account, url="https://93.184.216.34/hook", http_method="POST", signing_secret="x"
    )

    body = gql(
        UPDATE,
        {"id": str(destination.pk), "input": {"url": f"https://{host}/hook"}},
        persona=admin,
    )

    assert body == {"data": {"destinationUpdate": refusal()}}
    destination.refresh_from_db()
    assert destination.url == "https://93.184.216.34/hook"


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",  # 127.0.0.1 as one decimal number
        "http://0x7f000001/",
        "http://017700000001/",
        "http://127.1/",
        "http://[::ffff:7f00:1]/",  # 127.0.0.1 mapped, in hex
        "http://localhost./",
    ],
)
def test_other_spellings_of_loopback_are_refused(
    gql: GraphQL, admin: Persona, account: Account, url: str
) -> None:
    body = gql(
        CREATE,
        {"input": {"accountId": str(account.pk), "url": url, "httpMethod": "POST"}},
        persona=admin,
    )

    payload = body["data"]["destinationCreate"]
    assert [(m["code"], m["field"]) for m in payload["messages"]] == [("invalid_url", "url")]
    assert not Destination.objects.exists()


def test_public_literal_and_unresolvable_names_are_accepted(
    gql: GraphQL, admin: Persona, account: Account
) -> None:
    # A name that does not resolve now is not refused: each delivery checks it again.
    for url in ("https://93.184.216.34/hook", "https://does-not-resolve.invalid/hook"):
        body = gql(
            CREATE,
            {"input": {"accountId": str(account.pk), "url": url, "httpMethod": "POST"}},
            persona=admin,
        )
        assert body == {"data": {"destinationCreate": {"__typename": "Destination"}}}
    assert Destination.objects.count() == 2


@pytest.mark.parametrize("host", BLOCKED_HOSTS)
def test_delivery_to_a_stored_blocked_host_fails_without_a_request(
    account: Account, no_connections: list[Any], host: str
) -> None:
    # Stored before private networks were turned off (or by hand): the transport must refuse.
    destination = Destination.objects.create(
        account=account,
        url=f"http://{host}:8080/hook",
        http_method="POST",
        signing_secret="whsec_" + "A" * 44,
    )
    log = due_log(destination)

    assert engine.deliver_log(log_id=log.pk) == LogStatus.FAILED

    log.refresh_from_db()
    assert (log.status, log.attempt_count, log.last_status_code) == (LogStatus.FAILED, 1, None)
    [attempt] = DeliveryAttempt.objects.filter(log=log)
    assert attempt.error_class == "BlockedAddress"
    assert "DELIVERY_ALLOW_PRIVATE_NETWORKS is off" in attempt.error_message
    assert no_connections == []


# --- One reading of a URL: the check and the HTTP client see the same host -------------------

BACKSLASH = "A backslash is not allowed in a URL."
USERINFO = "user:password@ is not allowed in a URL; send credentials in a header."
AMBIGUOUS = "The host or port of this URL reads differently to different parsers."
TWO_READINGS = [
    # urlsplit (and the old check) reads the public host after "@"; urllib3 connects to the
    # host before the backslash.
    pytest.param("http://127.0.0.1:18110\\@93.184.215.14/", BACKSLASH, id="backslash-at"),
    pytest.param("http://93.184.215.14\\@127.0.0.1/", BACKSLASH, id="backslash-reversed"),
    pytest.param("http://93.184.215.14:80\\@93.184.216.34/", BACKSLASH, id="backslash-public"),
    pytest.param("https://93.184.215.14/a\\b", BACKSLASH, id="backslash-in-path"),
    pytest.param("http://user:pass@93.184.215.14/", USERINFO, id="userinfo"),
    pytest.param("http://127.0.0.1%2f@93.184.215.14/", USERINFO, id="encoded-userinfo"),
    pytest.param("http://@93.184.215.14/", USERINFO, id="empty-userinfo"),
    pytest.param("http://93.184.215.14:0/", AMBIGUOUS, id="port-zero"),
]


@pytest.mark.parametrize(("url", "message"), TWO_READINGS)
def test_destination_create_refuses_a_url_parsers_read_differently(
    gql: GraphQL, admin: Persona, account: Account, url: str, message: str
) -> None:
    if url.startswith("http://@"):  # Django's URLValidator refuses this one already
        message = "Enter a valid http(s) URL."
    body = gql(
        CREATE,
        {"input": {"accountId": str(account.pk), "url": url, "httpMethod": "POST"}},
        persona=admin,
    )

    assert body == {"data": {"destinationCreate": refusal(message)}}
    assert not Destination.objects.exists()


@pytest.mark.parametrize(("url", "message"), TWO_READINGS[:1] + TWO_READINGS[4:5])
def test_destination_update_refuses_a_url_parsers_read_differently(
    gql: GraphQL, admin: Persona, account: Account, url: str, message: str
) -> None:
    destination = Destination.objects.create(
        account=account, url="https://93.184.216.34/hook", http_method="POST", signing_secret="x"
    )

    body = gql(UPDATE, {"id": str(destination.pk), "input": {"url": url}}, persona=admin)

    assert body == {"data": {"destinationUpdate": refusal(message)}}
    destination.refresh_from_db()
    assert destination.url == "https://93.184.216.34/hook"


@pytest.mark.parametrize(("url", "message"), TWO_READINGS)
def test_delivery_to_a_stored_url_parsers_read_differently_fails_without_a_request(
    account: Account, no_connections: list[Any], url: str, message: str
) -> None:
    # Stored before URLs were parsed one way everywhere.
    destination = Destination.objects.create(
        account=account, url=url, http_method="POST", signing_secret="whsec_" + "A" * 44
    )
    log = due_log(destination)

    assert engine.deliver_log(log_id=log.pk) == LogStatus.FAILED

    log.refresh_from_db()
    assert (log.status, log.attempt_count, log.last_error) == (LogStatus.FAILED, 1, message)
    [attempt] = DeliveryAttempt.objects.filter(log=log)
    assert (attempt.error_class, attempt.error_message) == ("InvalidURL", message)
    assert no_connections == []


def test_the_host_checked_is_the_host_connected_to(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An IDN host with a trailing dot: what the check resolves is what urllib3 resolves.
    FAKE_DNS["xn--bcher-kva.example."] = ["93.184.216.34"]
    checked: list[tuple[str, int]] = []
    connected: list[tuple[str, int]] = []
    real_check = transport.check_host

    def check_host(host: str, port: int) -> None:
        checked.append((host, port))
        real_check(host, port)

    def refuse(address: Any, *args: Any, **kwargs: Any) -> Any:
        connected.append(address)
        raise ConnectionRefusedError("refused by the test")

    monkeypatch.setattr(transport, "check_host", check_host)
    monkeypatch.setattr(urllib3.util.connection, "create_connection", refuse)
    try:
        destination = Destination.objects.create(
            account=account,
            url="http://B\u00fccher.example.:8080/hook",
            http_method="POST",
            signing_secret="whsec_" + "A" * 44,
        )
        assert engine.deliver_log(log_id=due_log(destination).pk) == LogStatus.RETRYING
    finally:
        del FAKE_DNS["xn--bcher-kva.example."]

    assert checked == connected == [("xn--bcher-kva.example.", 8080)]
