"""The GraphQL schema: one place where every query, mutation and subscription is assembled."""

from collections.abc import Iterator
from typing import Any

import strawberry
from django.conf import settings
from graphql import GraphQLError, StringValueNode, ValidationRule
from strawberry.extensions import (
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry_django.optimizer import DjangoOptimizerExtension

from schema.delivery import DeliveryMutation, DeliveryQuery
from schema.errors import ErrorPolicy
from schema.identity import IdentityMutation, IdentityQuery
from schema.subscriptions import LiveExecutionContext, Subscription


@strawberry.type
class Query(IdentityQuery, DeliveryQuery):
    pass


@strawberry.type
class Mutation(IdentityMutation, DeliveryMutation):
    pass


class Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Expected errors (permission, validation, not found) are answers, not server faults;
        ErrorPolicy logs the unexpected ones with their traceback. Nothing to do here."""


NUL_MESSAGE = "Text must not contain NUL characters."


def _contains_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


class RefuseNul(SchemaExtension):
    """PostgreSQL can neither store nor compare text containing NUL: an operation with NUL in
    a string literal or a variable is refused at validation (code `invalid`), before anything
    runs, instead of failing in the database as an unexpected error."""

    def on_operation(self) -> Iterator[None]:
        variables = self.execution_context.variables

        class Rule(ValidationRule):
            def enter_document(self, *args: object) -> None:
                if _contains_nul(variables):
                    self.report_error(GraphQLError(NUL_MESSAGE, extensions={"code": "invalid"}))

            def enter_string_value(self, node: StringValueNode, *args: object) -> None:
                if "\x00" in node.value:
                    self.report_error(
                        GraphQLError(NUL_MESSAGE, node, extensions={"code": "invalid"})
                    )

        self.execution_context.validation_rules = (*self.execution_context.validation_rules, Rule)
        yield


class IntrospectionSetting(DisableIntrospection):
    """Refuses `__schema` and `__type` at validation unless GRAPHQL_INTROSPECTION is on (read
    per operation, so the setting can change in tests). `__typename` always answers;
    schema.graphql and `manage.py export_schema` do not need introspection."""

    def on_operation(self) -> Iterator[None]:
        if settings.GRAPHQL_INTROSPECTION:
            yield
        else:
            yield from super().on_operation()


schema = Schema(
    query=Query,
    mutation=Mutation,
    subscription=Subscription,
    extensions=[
        lambda: QueryDepthLimiter(max_depth=settings.GRAPHQL_MAX_DEPTH),
        lambda: MaxAliasesLimiter(max_alias_count=settings.GRAPHQL_MAX_ALIASES),
        lambda: MaxTokensLimiter(max_token_count=settings.GRAPHQL_MAX_TOKENS),
        RefuseNul,
        IntrospectionSetting,
        ErrorPolicy,
        DjangoOptimizerExtension,
    ],
    execution_context_class=LiveExecutionContext,
)
