"""The GraphQL schema: one place where every query, mutation and subscription is assembled."""

from typing import Any

import strawberry
from django.conf import settings
from graphql import GraphQLError
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry_django.optimizer import DjangoOptimizerExtension

from schema.delivery import DeliveryMutation, DeliveryQuery
from schema.errors import ErrorPolicy
from schema.identity import IdentityMutation, IdentityQuery
from schema.subscriptions import Subscription


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


schema = Schema(
    query=Query,
    mutation=Mutation,
    subscription=Subscription,
    extensions=[
        lambda: QueryDepthLimiter(max_depth=settings.GRAPHQL_MAX_DEPTH),
        lambda: MaxAliasesLimiter(max_alias_count=settings.GRAPHQL_MAX_ALIASES),
        lambda: MaxTokensLimiter(max_token_count=settings.GRAPHQL_MAX_TOKENS),
        ErrorPolicy,
        DjangoOptimizerExtension,
    ],
)
