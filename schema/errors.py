"""How errors reach GraphQL clients.

Expected errors (our codes, Django's validation/permission/not-found) keep their message and
gain `extensions.code`; query-language errors (syntax, validation, limits) pass as they are;
everything else is logged with its traceback and masked as "Unexpected error.".
"""

import logging

from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError
from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors

from identity.errors import ErrorCode

logger = logging.getLogger("datapusher.graphql")

_EXPECTED = (ObjectDoesNotExist, PermissionDenied, ValidationError)


def _code(error: Exception) -> str:
    code = getattr(error, "code", None)
    if code:
        return str(code)
    if isinstance(error, PermissionDenied):
        return ErrorCode.PERMISSION_DENIED
    if isinstance(error, ObjectDoesNotExist):
        return ErrorCode.NOT_FOUND
    return ErrorCode.INVALID


class ErrorPolicy(MaskErrors):
    def __init__(self) -> None:
        super().__init__(should_mask_error=self._should_mask)

    @staticmethod
    def _should_mask(error: GraphQLError) -> bool:
        original = error.original_error
        if original is None or isinstance(original, GraphQLError):
            return False
        return not isinstance(original, _EXPECTED)

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        processed = []
        for error in errors:
            original = error.original_error
            if self._should_mask(error):
                logger.error("Unexpected GraphQL error", exc_info=original)
                processed.append(self.anonymise_error(error))
                continue
            if isinstance(original, _EXPECTED):
                message = (
                    " ".join(original.messages)
                    if isinstance(original, ValidationError)
                    else str(original)
                )
                error = GraphQLError(
                    message,
                    nodes=error.nodes,
                    source=error.source,
                    positions=error.positions,
                    path=error.path,
                    original_error=original,
                    extensions={**(error.extensions or {}), "code": _code(original)},
                )
            processed.append(error)
        return processed
