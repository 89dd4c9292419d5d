from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from identity.models import Account, AuthToken, Invitation, Membership, User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ("email",)
    list_display = ("email", "full_name", "email_verified_at", "is_active", "is_staff")
    search_fields = ("email", "full_name", "pending_email")
    readonly_fields = ("email_secret_hash", "email_secret_expires_at")
    fieldsets = (
        (None, {"fields": ("email", "password", "full_name")}),
        (
            "Email proof",
            {
                "fields": (
                    "email_verified_at",
                    "pending_email",
                    "email_secret_hash",
                    "email_secret_expires_at",
                )
            },
        ),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ("user",)


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ("name", "id", "secret_prefix", "created_at")
    search_fields = ("name", "id")
    readonly_fields = (
        "secret_prefix",
        "secret_hash",
        "previous_secret_hash",
        "created_by",
        "updated_by",
    )
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "account", "role", "created_at")
    list_filter = ("role",)
    raw_id_fields = ("user", "account")


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ("email", "account", "role", "created_at", "expires_at")
    raw_id_fields = ("account", "invited_by")
    # The secret exists only in the mail; an invitation is re-sent through memberInvite.
    readonly_fields = ("secret_hash",)


@admin.register(AuthToken)
class AuthTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "created_at", "expires_at", "last_used_at")
    readonly_fields = ("key_hash", "prefix")
    raw_id_fields = ("user",)
