"""The authentication backend of the admin site's login: Django's ModelBackend, with the
password checked through the login throttle (identity.throttle) that GraphQL uses too."""

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest

from identity import throttle
from identity.models import User


class ThrottledModelBackend(ModelBackend):
    """Email and password, counted against the same failure limits as GraphQL `login`."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        """The active user whose password this is, or None. Raises PermissionDenied (which
        makes Django's `authenticate` fail at once) when the caller is throttled: the admin
        form then refuses even the right password."""
        if username is None:
            username = kwargs.get(User.USERNAME_FIELD)
        if username is None or password is None:
            return None
        user = User.objects.filter(email__iexact=username.strip(), is_active=True).first()
        try:
            checked = throttle.password_check(
                user=user,
                email=username,
                password=password,
                client_address=throttle.address_from_meta(request.META) if request else "",
            )
        except ValidationError:
            raise PermissionDenied("Too many failed logins.") from None
        return user if checked and self.user_can_authenticate(user) else None
