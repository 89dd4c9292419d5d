"""/graphql/ over HTTP: every error outside an execution in GraphQL's JSON shape, never an
HTML page — malformed or deeply nested JSON, an unreachable database, an unexpected error,
credentials in the URL."""

import json
from typing import Any

import pytest
from django.db import OperationalError, connection
from django.test import Client

from tests.conftest import Persona

ME = "{ me { id } }"


def gql_error(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code}}]}


def post(body: str | bytes, *, token: str | None = None, path: str = "/graphql/") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Client(raise_request_exception=False).post(
        path, body, content_type="application/json", headers=headers
    )


DEPTH = 100_000


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("[" * DEPTH + "]" * DEPTH, id="nested-body"),
        pytest.param(
            '{"query": "' + ME + '", "variables": {"a": ' + "[" * DEPTH + "]" * DEPTH + "}}",
            id="nested-variables",
        ),
        pytest.param("{not json", id="malformed"),
    ],
)
@pytest.mark.parametrize("with_token", [False, True], ids=["anonymous", "admin"])
def test_json_that_cannot_be_decoded_is_a_json_400(
    admin: Persona, body: str, with_token: bool
) -> None:
    response = post(body, token=admin.token if with_token else None)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json() == gql_error("bad_request", "Unable to parse request body as JSON")


def test_deeply_nested_variables_in_a_get_are_a_json_400(db: None) -> None:
    variables = "[" * DEPTH + "]" * DEPTH
    response = Client().get("/graphql/", {"query": ME, "variables": variables})
    assert response.status_code == 400
    assert response.json() == gql_error("bad_request", "Unable to parse request body as JSON")


def test_unsupported_content_type_is_a_json_400(db: None) -> None:
    response = Client().post("/graphql/", "a=1", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert response.json() == gql_error("bad_request", "Unsupported content type")


@pytest.mark.parametrize("query", ["token=dpu_x", "authToken=dpu_x", "access_token=dpu_x"])
def test_credentials_in_the_url_are_refused(admin: Persona, query: str) -> None:
    response = post(json.dumps({"query": ME}), path=f"/graphql/?{query}")
    assert response.status_code == 400
    assert response.json() == gql_error(
        "token_in_url", "Send credentials in headers, never in the URL."
    )


def test_database_outage_is_a_json_503_with_retry_after(admin: Persona) -> None:
    def down(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("connection refused")

    with connection.execute_wrapper(down):
        response = post(json.dumps({"query": ME}), token=admin.token)
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json() == gql_error("unavailable", "Temporarily unavailable; retry.")


def test_unexpected_error_outside_execution_is_a_json_500(
    admin: Persona, monkeypatch: pytest.MonkeyPatch
) -> None:
    from schema import views

    def broken(raw: str | None) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(views, "resolve_user", broken)
    response = post(json.dumps({"query": ME}), token=admin.token)
    assert response.status_code == 500
    assert response.json() == gql_error("internal_error", "Unexpected error.")


def test_body_over_djangos_upload_limit_is_a_json_413(db: None, settings: Any) -> None:
    body = json.dumps({"query": ME, "variables": {"pad": "x" * 3_000_000}})
    response = post(body)
    assert response.status_code == 413
    assert response.json() == gql_error(
        "payload_too_large", f"Body larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
    )
