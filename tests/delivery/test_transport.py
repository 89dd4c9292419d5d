"""The pieces of the transport and the retry policy that need no server: which addresses are
public, the signature, the classification of answers, and the retry delays."""

import base64
import hashlib
import hmac
import random

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings

from delivery import destinations, policy, transport
from delivery.models import Destination
from delivery.policy import retry_delay
from identity.models import Account, User


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "127.8.9.10",
        "0.0.0.0",
        "169.254.169.254",  # link-local: the classic cloud metadata address
        "100.100.100.200",  # shared address space (100.64.0.0/10): a metadata address too
        "224.0.0.1",
        "255.255.255.255",
        "192.0.2.10",
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
        "64:ff9b::7f00:1",  # NAT64 wrapping 127.0.0.1
    ],
)
def test_private_loopback_link_local_and_mapped_addresses_are_not_public(address: str) -> None:
    assert transport.is_public_address(address) is False


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_global_addresses_are_public(address: str) -> None:
    assert transport.is_public_address(address) is True


def test_a_name_resolving_to_loopback_is_blocked() -> None:
    with pytest.raises(
        transport.BlockedAddress, match=r"^localhost resolves to (127\.0\.0\.1|::1)"
    ):
        transport.check_host("localhost", 80)


def test_a_loopback_literal_is_blocked() -> None:
    with pytest.raises(transport.BlockedAddress, match=r"^::ffff:127\.0\.0\.1 resolves to "):
        transport.check_host("::ffff:127.0.0.1", 80)


@override_settings(DELIVERY_ALLOW_PRIVATE_NETWORKS=False)
@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/hook", "http://localhost:8000/", "http://[::1]/", "http://a.localhost/"],
)
def test_private_destination_urls_are_refused_when_private_networks_are_off(
    admin_user: User, account: Account, url: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        destinations.destination_create(
            actor=admin_user, account_id=account.pk, url=url, http_method="POST"
        )
    assert refused.value.message_dict == {
        "url": ["Private, loopback and link-local destinations are not allowed."]
    }
    assert refused.value.error_dict["url"][0].code == "invalid_url"
    assert not Destination.objects.exists()


def test_signature_is_standard_webhooks_hmac_over_id_timestamp_body() -> None:
    key = b"0123456789abcdef0123456789abcdef"
    secret = "whsec_" + base64.b64encode(key).decode()
    expected = base64.b64encode(
        hmac.new(key, b'msg_1.1700000000.{"a":1}', hashlib.sha256).digest()
    ).decode()
    assert transport.sign(secret, "msg_1", 1700000000, '{"a":1}') == f"v1,{expected}"


def test_new_signing_secrets_are_whsec_with_32_random_bytes() -> None:
    first, second = transport.new_signing_secret(), transport.new_signing_secret()
    assert first.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    assert first != second


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, "success"),
        (204, "success"),
        (299, "success"),
        (301, "permanent"),
        (302, "permanent"),
        (400, "permanent"),
        (401, "permanent"),
        (404, "permanent"),
        (410, "permanent"),
        (408, "transient"),
        (429, "transient"),
        (500, "transient"),
        (503, "transient"),
    ],
)
def test_classification_of_status_codes(status: int, kind: str) -> None:
    assert transport.classify(status) == kind


SCHEDULE = [5.0, 30.0, 120.0]


@override_settings(DELIVERY_RETRY_SCHEDULE=SCHEDULE, DELIVERY_RETRY_JITTER=0.1)
def test_retry_delay_is_never_earlier_than_the_schedule() -> None:
    random.seed(1234)
    for attempt, scheduled in enumerate(SCHEDULE, start=1):
        delays = [retry_delay(attempt) for _ in range(500)]
        assert all(d is not None and scheduled <= d <= scheduled * 1.1 for d in delays)
        assert len(set(delays)) > 1  # there is jitter
    assert retry_delay(len(SCHEDULE) + 1) is None


@override_settings(DELIVERY_RETRY_SCHEDULE=SCHEDULE, DELIVERY_RETRY_JITTER=0.1)
def test_retry_delay_bounds_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy.random, "random", lambda: 0.0)
    assert retry_delay(2) == 30.0
    monkeypatch.setattr(policy.random, "random", lambda: 0.999999)
    assert retry_delay(2) == pytest.approx(33.0, abs=1e-3)


@override_settings(
    DELIVERY_RETRY_SCHEDULE=SCHEDULE, DELIVERY_RETRY_JITTER=0.1, DELIVERY_RETRY_AFTER_CAP=600.0
)
def test_retry_after_only_pushes_the_next_try_later_and_is_capped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(policy.random, "random", lambda: 0.0)
    assert retry_delay(1, retry_after=1.0) == 5.0
    assert retry_delay(1, retry_after=90.0) == 90.0
    assert retry_delay(1, retry_after=10_000.0) == 600.0
    assert retry_delay(len(SCHEDULE) + 1, retry_after=1.0) is None


# --- One reading of a URL -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://Example.COM/a", ("https://example.com/a", "https", "example.com", 443)),
        ("http://example.com:8080", ("http://example.com:8080/", "http", "example.com", 8080)),
        ("http://[::1]:9/x", ("http://[::1]:9/x", "http", "::1", 9)),
        (
            "http://B\u00fccher.example./x",
            ("http://xn--bcher-kva.example./x", "http", "xn--bcher-kva.example.", 80),
        ),
        (
            "https://example.com/a%7Eb?q=%7E",
            ("https://example.com/a~b?q=~", "https", "example.com", 443),
        ),
    ],
)
def test_parse_url_reads_a_url_as_the_http_client_sends_it(
    url: str, expected: tuple[str, str, str, int]
) -> None:
    target = transport.parse_url(url)
    assert (target.url, target.scheme, target.host, target.port) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:18110\\@93.184.215.14/", transport.BACKSLASH_MESSAGE),
        ("http://a:b@example.com/", transport.USERINFO_MESSAGE),
        ("http://a@example.com/", transport.USERINFO_MESSAGE),
        ("http://example.com:0/", transport.AMBIGUOUS_MESSAGE),
        ("ftp://example.com/", "Not an http(s) URL with a host."),
        ("http:///path", "Not a valid URL: Invalid URL 'http:///path': No host supplied"),
        ("http://1.2.3.4:99999/", "Not a valid URL: Failed to parse: http://1.2.3.4:99999/"),
    ],
)
def test_parse_url_refuses_what_parsers_read_apart(url: str, message: str) -> None:
    with pytest.raises(transport.InvalidURL) as refused:
        transport.parse_url(url)
    assert str(refused.value) == message
