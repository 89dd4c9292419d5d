from enum import StrEnum


class DeliveryErrorCode(StrEnum):
    """Stable codes of the delivery domain (GraphQL `OperationInfo` and the REST endpoint)."""

    INVALID_URL = "invalid_url"
    INVALID_METHOD = "invalid_method"
    INVALID_HEADERS = "invalid_headers"
    INVALID_MAX_IN_FLIGHT = "invalid_max_in_flight"
    INVALID_RATE_LIMIT = "invalid_rate_limit"
    INVALID_FILTER = "invalid_filter"
    NOT_RETRYABLE = "not_retryable"
    # REST: POST /server/incoming_data/
    INVALID_DATA = "invalid_data"
    INVALID_EVENT_ID = "invalid_event_id"
    UNAUTHENTICATED = "unauthenticated"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    TOKEN_IN_URL = "token_in_url"
    INTERNAL_ERROR = "internal_error"
