"""Input checks shared by the identity services, run before anything is written."""

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from identity.errors import ErrorCode, invalid
from identity.models import User


def clean_email(email: str, *, field: str = "email") -> str:
    """`email` normalised (trimmed, lower-case) or ValidationError `invalid` on `field`."""
    email = User.objects.normalize_email(email.strip()).lower()
    try:
        validate_email(email)
    except ValidationError:
        raise invalid(ErrorCode.INVALID, "Enter a valid email address.", field=field) from None
    return email
