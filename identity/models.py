import uuid
from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone


class UserManager(BaseUserManager["User"]):
    def create_user(self, email: str, password: str | None = None, **extra: Any) -> "User":
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> "User":
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person who logs in with an email address and a password."""

    email = models.EmailField(unique=True, help_text="Login name; stored lower-case.")
    full_name = models.CharField(max_length=150, blank=True, default="")
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False, help_text="May log in to the Django admin.")
    date_joined = models.DateTimeField(default=timezone.now)
    email_verified_at = models.DateTimeField(
        null=True, blank=True, help_text="When the user proved they receive mail at `email`."
    )
    pending_email = models.EmailField(
        blank=True, default="", help_text="A new address waiting for its verification token."
    )
    # The digest of the one outstanding verification token: it proves `pending_email` when
    # that is set, else `email`. Only the digest is stored; the token exists only in the mail.
    email_secret_hash = models.CharField(max_length=64, blank=True, default="", db_index=True)
    email_secret_expires_at = models.DateTimeField(null=True, blank=True)

    objects: ClassVar[UserManager] = UserManager()

    EMAIL_SECRET_PREFIX = "dpv_"

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        constraints = [models.UniqueConstraint(Lower("email"), name="user_email_ci_unique")]

    def __str__(self) -> str:
        return self.email


class Account(models.Model):
    """A tenant: owns destinations and incoming data, authenticated by its app secret."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    website = models.URLField(blank=True, default="")
    secret_prefix = models.CharField(
        max_length=20, help_text="The visible start of the current app secret."
    )
    secret_hash = models.CharField(max_length=64, unique=True)
    previous_secret_hash = models.CharField(max_length=64, blank=True, default="", db_index=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    # Defaults of its destinations' limits (a destination's own value wins; empty: the
    # server's DELIVERY_MAX_IN_FLIGHT / DELIVERY_RATE_LIMIT).
    default_max_in_flight = models.PositiveSmallIntegerField(null=True, blank=True)
    default_rate_limit = models.PositiveIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    ADMIN = "ADMIN", "Admin"
    NORMAL_USER = "NORMAL_USER", "Normal user"


class Membership(models.Model):
    """A user's role in one account."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["user", "account"], name="membership_user_account")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.account_id} as {self.role}"


class Invitation(models.Model):
    """A role offered to an email address, pending until someone who is logged in with that
    address presents its secret (mailed to the address) before it expires."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=20, choices=Role.choices)
    invited_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Only the digest of the single-use secret is stored; without one nothing can accept.
    secret_hash = models.CharField(max_length=64, blank=True, default="", db_index=True)
    expires_at = models.DateTimeField(
        default=timezone.now, help_text="After this the invitation can no longer be accepted."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    SECRET_PREFIX = "dpi_"

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["account", "email"], name="invitation_account_email")
        ]

    def __str__(self) -> str:
        return f"{self.email} to {self.account_id}"


class AuthToken(models.Model):
    """An opaque bearer token for one user; only its SHA-256 digest is stored."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="auth_tokens")
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=20)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user_id})"
