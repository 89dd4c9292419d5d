"""Encryption at rest for the few values the service must be able to read back: destination
signing secrets (they sign every request) and header values (API keys of the receiver).

Values are Fernet tokens (AES-128-CBC + HMAC-SHA256, random IV) made with the keys of the
ENCRYPTION_KEYS setting: the first key encrypts, every key decrypts, so keys rotate without
downtime (README: Encryption at rest; `manage.py rotate_encryption_keys`). The model fields
below give the clear value to Python and store only the token, so every reader and writer of
`destination.signing_secret` / `destination.headers` keeps using a str / a dict.
"""

import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django import forms
from django.conf import settings
from django.db import models, transaction
from django.db.models.functions import Cast
from django.db.models.lookups import IsNull


class DecryptionError(Exception):
    """A stored value that no key of ENCRYPTION_KEYS decrypts."""


@lru_cache(maxsize=8)
def _fernets(keys: tuple[str, ...]) -> tuple[MultiFernet, Fernet]:
    # Keyed by the keys themselves, so a changed setting (tests, override_settings) is seen.
    fernets = [Fernet(key) for key in keys]
    return MultiFernet(fernets), fernets[0]


def _keys() -> tuple[MultiFernet, Fernet]:
    return _fernets(tuple(settings.ENCRYPTION_KEYS))


def encrypt(text: str) -> str:
    """A Fernet token of `text` made with the first key."""
    return _keys()[0].encrypt(text.encode()).decode("ascii")


def _undecryptable(what: str) -> DecryptionError:
    return DecryptionError(
        f"{what}: no key of ENCRYPTION_KEYS decrypts the stored value (was the key that "
        "encrypted it removed before `manage.py rotate_encryption_keys` ran?)"
    )


def decrypt(token: str, *, what: str = "value") -> str:
    """The clear text of `token`; raises DecryptionError (naming `what`) if no key fits."""
    try:
        return _keys()[0].decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeError):
        raise _undecryptable(what) from None


def is_current(token: str) -> bool:
    """Whether `token` is already encrypted with the first key (rotation skips it)."""
    try:
        _keys()[1].decrypt(token.encode("ascii"))
    except (InvalidToken, UnicodeError):
        return False
    return True


def rotate(token: str, *, what: str = "value") -> str:
    """`token` re-encrypted with the first key; raises DecryptionError if no key fits."""
    try:
        return _keys()[0].rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, UnicodeError):
        raise _undecryptable(what) from None


if TYPE_CHECKING:
    _Field = models.Field[Any, Any]
else:
    _Field = models.Field  # not subscriptable at run time


class EncryptedField(_Field):
    """Base of the encrypted fields: a text column holding a Fernet token. Ciphertexts are
    random, so no lookup but `isnull` could ever match: the others raise FieldError."""

    def get_internal_type(self) -> str:
        return "TextField"

    def dump(self, value: Any) -> str:
        raise NotImplementedError

    def load(self, text: str) -> Any:
        raise NotImplementedError

    def get_lookup(self, lookup_name: str) -> Any:
        return IsNull if lookup_name == "isnull" else None

    def get_transform(self, lookup_name: str) -> Any:
        return None

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Any:
        if value is None:
            return None
        return self.load(decrypt(value, what=f"{self.model._meta.label}.{self.name}"))

    def get_prep_value(self, value: Any) -> str | None:
        if value is None:
            return None
        return encrypt(self.dump(value))

    def value_to_string(self, obj: models.Model) -> str:
        # dumpdata writes the clear value; loaddata encrypts it again on save.
        return self.dump(self.value_from_object(obj))


class EncryptedTextField(EncryptedField):
    """A str stored encrypted."""

    _pyi_private_set_type: str
    _pyi_private_get_type: str
    description = "Text, encrypted at rest"

    def dump(self, value: Any) -> str:
        return str(value)

    def load(self, text: str) -> str:
        return text

    def to_python(self, value: Any) -> str | None:
        return value if value is None else str(value)


class EncryptedJSONField(EncryptedField):
    """A JSON value (here: a dict of header names to values) stored encrypted as JSON text."""

    _pyi_private_set_type: dict[str, str]
    _pyi_private_get_type: dict[str, str]
    description = "A JSON object, encrypted at rest"

    def dump(self, value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def load(self, text: str) -> Any:
        return json.loads(text)

    def to_python(self, value: Any) -> Any:
        return self.load(value) if isinstance(value, str) else value

    def formfield(
        self,
        form_class: type[forms.Field] | None = None,
        choices_form_class: type[forms.ChoiceField] | None = None,
        **kwargs: Any,
    ) -> forms.Field | None:
        return super().formfield(
            form_class=form_class or forms.JSONField,
            choices_form_class=choices_form_class,
            **kwargs,
        )


def encrypted_fields(model: type[models.Model]) -> list[EncryptedField]:
    """The encrypted fields of `model` (empty for most models)."""
    return [f for f in model._meta.concrete_fields if isinstance(f, EncryptedField)]


def reencrypt(model: type[models.Model], *, batch_size: int = 500) -> tuple[int, int]:
    """Re-encrypt with the first key every value of `model`'s encrypted fields that another
    key encrypted, `batch_size` rows per transaction (rows locked while they are rewritten,
    so a concurrent update is never overwritten with an old value). Values already under the
    first key are left alone: running it again is harmless. Returns (rows rewritten, rows).

    Raises DecryptionError for a value no key decrypts."""
    fields = encrypted_fields(model)
    # Read the stored tokens as plain text, and write tokens back as plain text: the fields
    # themselves would decrypt on read and encrypt again on write.
    tokens = {f"_token_{f.attname}": Cast(f.attname, models.TextField()) for f in fields}
    rewritten = total = 0
    last: Any = None
    while True:
        with transaction.atomic(using=model._default_manager.db):
            rows = model._default_manager.order_by("pk").select_for_update()
            if last is not None:
                rows = rows.filter(pk__gt=last)
            batch = list(rows.annotate(**tokens).values_list("pk", *tokens)[:batch_size])
            for pk, *values in batch:
                changes = {
                    field.attname: models.Value(
                        rotate(value, what=f"{model._meta.label}.{field.name} of row {pk}"),
                        output_field=models.TextField(),
                    )
                    for field, value in zip(fields, values, strict=True)
                    if value is not None and not is_current(value)
                }
                if changes:
                    model._default_manager.filter(pk=pk).update(**changes)
                    rewritten += 1
        if not batch:
            return rewritten, total
        total += len(batch)
        last = batch[-1][0]
