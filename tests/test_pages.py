"""The pages the app serves to browsers — the dashboard (`/`) and GraphiQL — load every asset
from the app's own static files (no CDN: they work offline), and each vendored file is the one
its `integrity` hash names. In a real browser: tests/browser/."""

import base64
import hashlib
import re
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.template.loader import render_to_string
from django.test import Client

ASSET = re.compile(r'<(?:script|link)\b[^>]*?(?:src|href)="([^"]+)"[^>]*>', re.S)
INTEGRITY = re.compile(r'(?:src|href)="([^"]+)"\s+integrity="sha384-([^"]+)"')


def assets(html: str) -> list[str]:
    return ASSET.findall(html)


def static_file(url: str) -> Path:
    assert url.startswith("/static/"), url
    found = finders.find(url.removeprefix("/static/"))
    assert found, f"{url} is not among the static files"
    return Path(str(found))


def test_graphiql_loads_its_assets_from_the_app_with_matching_integrity() -> None:
    html = render_to_string("graphql/graphiql.html")
    urls = [url for url in assets(html) if not url.startswith("data:")]  # the inline icon
    hashes = dict(INTEGRITY.findall(html))

    assert len(urls) == 6
    assert "unpkg" not in html
    assert "Cookies" not in html
    for url in urls:
        digest = hashlib.sha384(static_file(url).read_bytes()).digest()
        assert base64.b64encode(digest).decode() == hashes[url], url


def test_graphiql_is_off_by_default_and_answers_json(db: None) -> None:
    response = Client().get("/graphql/", HTTP_ACCEPT="text/html")

    assert response.status_code == 404
    assert response.json() == {
        "errors": [{"message": "Not Found", "extensions": {"code": "bad_request"}}]
    }


def test_the_dashboard_page_loads_only_its_own_files(db: None) -> None:
    response = Client().get("/")
    urls = assets(response.text)

    assert response.status_code == 200
    assert urls == [
        "/static/dashboard/dashboard.css",
        "/static/vendor/graphql-ws-6.4.2/graphql-ws.min.js",
        "/static/dashboard/dashboard.js",
    ]
    for url in urls:
        assert static_file(url).stat().st_size > 0


@pytest.mark.parametrize(
    "folder",
    sorted(
        p.name
        for p in (Path(__file__).parents[1] / "project/static/vendor").iterdir()
        if p.is_dir()
    ),
)
def test_every_vendored_package_keeps_its_licence(folder: str) -> None:
    root = Path(__file__).parents[1] / "project/static/vendor" / folder
    licences = [p for p in root.iterdir() if p.name.upper().startswith("LICENSE")]

    assert licences, f"{folder} has no licence file"
    assert (
        "MIT License" in licences[0].read_text()
        or "Permission is hereby granted" in licences[0].read_text()
    )
