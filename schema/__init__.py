"""The GraphQL schema: one place where every query, mutation and subscription is assembled."""

import strawberry
from django.conf import settings
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry_django.optimizer import DjangoOptimizerExtension

from schema.delivery import DeliveryMutation, DeliveryQuery
from schema.errors import ErrorPolicy
from schema.identity import IdentityMutation, IdentityQuery


@strawberry.type
class Query(IdentityQuery, DeliveryQuery):
    pass


@strawberry.type
class Mutation(IdentityMutation, DeliveryMutation):
    pass


schema = strawberry.Schema(
    query=Query,
    mutation=Mutation,
    extensions=[
        lambda: QueryDepthLimiter(max_depth=settings.GRAPHQL_MAX_DEPTH),
        lambda: MaxAliasesLimiter(max_alias_count=settings.GRAPHQL_MAX_ALIASES),
        lambda: MaxTokensLimiter(max_token_count=settings.GRAPHQL_MAX_TOKENS),
        ErrorPolicy,
        DjangoOptimizerExtension,
    ],
)
