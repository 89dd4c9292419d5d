"""Fixtures of the identity tests."""

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest

from tests.conftest import GraphQL
from tests.identity.helpers import Call


@pytest.fixture
def call(
    gql: GraphQL,
    django_capture_on_commit_callbacks: Callable[..., AbstractContextManager[list[Any]]],
) -> Call:
    """`gql`, running what the call scheduled after commit (the mail) as production does."""

    def run(query: str, variables: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        with django_capture_on_commit_callbacks(execute=True):
            return gql(query, variables, **kw)

    return run
