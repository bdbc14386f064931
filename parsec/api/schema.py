"""Data-driven validation of decoded msgpack maps.

A schema is a mapping of field name to `Field`. `Schema.load(raw)` returns a
plain dict of validated (and converted) values, or raises `ValidationError`
whose `errors` map mirrors the reference server's validation messages
(docs/protocol/transport.md §6 step 4). Unknown keys are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from parsec.api import ids

MISSING_MSG = "Missing data for required field."
NULL_MSG = "Field may not be null."


class FieldError(Exception):
    def __init__(self, message: str | dict[Any, Any] | list[str]) -> None:
        super().__init__(message)
        self.message = message

    def as_list(self) -> list[str] | dict[Any, Any]:
        if isinstance(self.message, (dict, list)):
            return self.message
        return [self.message]


class ValidationError(Exception):
    def __init__(self, errors: dict[str, Any]) -> None:
        super().__init__(errors)
        self.errors = errors

    def __str__(self) -> str:
        return repr(self.errors)


_MISSING = object()


class Field:
    """Base field: `required` means the key must be present; `allow_none` lets nil through."""

    def __init__(self, *, required: bool = True, allow_none: bool = False, default: Any = _MISSING) -> None:
        self.required = required
        self.allow_none = allow_none
        self.default = default

    def convert(self, value: Any) -> Any:
        return value

    def load(self, value: Any) -> Any:
        if value is None:
            if self.allow_none:
                return None
            raise FieldError(NULL_MSG)
        return self.convert(value)


class Any_(Field):
    pass


class Str(Field):
    def __init__(self, *, max_length: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_length = max_length

    def convert(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise FieldError("Not a valid string.")
        if self.max_length is not None and len(value) > self.max_length:
            raise FieldError(f"Longer than maximum length {self.max_length}.")
        return value


class Bytes(Field):
    def __init__(self, *, size: int | None = None, max_length: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = size
        self.max_length = max_length

    def convert(self, value: Any) -> Any:
        if not isinstance(value, bytes):
            raise FieldError("Not bytes")
        if self.size is not None and len(value) != self.size:
            raise FieldError("Invalid value.")
        if self.max_length is not None and len(value) > self.max_length:
            raise FieldError(f"Longer than maximum length {self.max_length}.")
        return value


class VerifyKey(Bytes):
    """32-byte Ed25519 key. The reference builds the key object from whatever it gets and
    says `Invalid verify key.` for any failure (str, wrong size...)."""

    def convert(self, value: Any) -> Any:
        if not isinstance(value, bytes) or len(value) != 32:
            raise FieldError("Invalid verify key.")
        return value


class PublicKey(Bytes):
    """32-byte X25519 key; the reference's error text is also `Invalid verify key.`."""

    def convert(self, value: Any) -> Any:
        if not isinstance(value, bytes) or len(value) != 32:
            raise FieldError("Invalid verify key.")
        return value


class Int(Field):
    """`min`/`max` are inclusive bounds. `range_error` replaces the default out-of-range
    text (the reference uses `Invalid value.` for bounds written as custom validators)."""

    def __init__(
        self,
        *,
        min: int | None = None,
        max: int | None = None,
        range_error: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.min = min
        self.max = max
        self.range_error = range_error

    def convert(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldError("Not a valid integer.")
        if self.min is not None and self.max is not None:
            message = f"Must be between {self.min} and {self.max}."
            in_range = self.min <= value <= self.max
        elif self.min is not None:
            message = f"Must be at least {self.min}."
            in_range = value >= self.min
        elif self.max is not None:
            message = f"Must be at most {self.max}."
            in_range = value <= self.max
        else:
            return value
        if not in_range:
            raise FieldError(self.range_error or message)
        return value


class Float(Field):
    def convert(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FieldError("Not a valid number.")
        return float(value)


class Bool(Field):
    def convert(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise FieldError("Not a valid boolean.")
        return value


class DateTime(Field):
    def convert(self, value: Any) -> Any:
        if not isinstance(value, datetime):
            raise FieldError("Not a datetime")
        return value


class Uuid(Field):
    def convert(self, value: Any) -> Any:
        if not isinstance(value, UUID):
            raise FieldError("Not an UUID")
        return value


class Constant(Field):
    def __init__(self, constant: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.constant = constant

    def convert(self, value: Any) -> Any:
        if value != self.constant or type(value) is not type(self.constant):
            raise FieldError(f"Invalid value, should be `{self.constant}`")
        return value


class Enum(Field):
    def __init__(self, values: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.values = frozenset(values)

    def convert(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise FieldError("Not string")
        if value not in self.values:
            raise FieldError(f"Invalid role `{value}`")
        return value


class Identifier(Field):
    """A str validated by one of the `parsec.api.ids` functions."""

    def __init__(self, validator: Callable[[object], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validator = validator

    def convert(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise FieldError("Not string")
        try:
            return self.validator(value)
        except ids.InvalidId:
            raise FieldError("Invalid data") from None


class HumanHandle(Field):
    def convert(self, value: Any) -> Any:
        try:
            return ids.human_handle(value)
        except ids.InvalidId:
            raise FieldError("Invalid data") from None


class List(Field):
    def __init__(self, item: Field, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.item = item

    def convert(self, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise FieldError("Not a valid list.")
        result = []
        errors: dict[int, Any] = {}
        for index, item in enumerate(value):
            try:
                result.append(self.item.load(item))
            except FieldError as exc:
                errors[index] = exc.as_list()
        if errors:
            raise FieldError(errors)
        return result


class Tuple(Field):
    def __init__(self, *items: Field, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.items = items

    def convert(self, value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != len(self.items):
            raise FieldError("Not a valid tuple type.")
        errors: dict[int, Any] = {}
        result = []
        for index, (field, item) in enumerate(zip(self.items, value, strict=True)):
            try:
                result.append(field.load(item))
            except FieldError as exc:
                errors[index] = exc.as_list()
        if errors:
            raise FieldError(errors)
        return tuple(result)


class Map(Field):
    """Like the reference, stops at the first bad entry (key checked before its value) and
    reports that entry's error as the whole field's error."""

    def __init__(self, key: Field, value: Field, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key = key
        self.value = value

    def convert(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise FieldError("Not a valid mapping type.")
        return {self.key.load(k): self.value.load(v) for k, v in value.items()}


class Nested(Field):
    """A map validated by a `Schema`, or by a `OneOf` (discriminated union)."""

    def __init__(self, schema: Schema | OneOf, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.schema = schema

    def convert(self, value: Any) -> Any:
        try:
            return self.schema.load(value)
        except ValidationError as exc:
            raise FieldError(exc.errors) from None


UNKNOWN_MSG = "Unknown field."


class Schema:
    """`strict=True` refuses keys that are not declared (error `Unknown field.`); requests
    ignore unknown keys, strict schemas are meant to check the server's own replies."""

    def __init__(
        self, fields: Mapping[str, Field] | None = None, *, strict: bool = False, **kwargs: Field
    ) -> None:
        self.fields: dict[str, Field] = {**(fields or {}), **kwargs}
        self.strict = strict

    def extend(self, **kwargs: Field) -> Schema:
        return Schema({**self.fields, **kwargs}, strict=self.strict)

    def load(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ValidationError({"_schema": ["Invalid input type."]})
        result: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for name, field in self.fields.items():
            value = data.get(name, _MISSING)
            if value is _MISSING:
                if field.required:
                    errors[name] = [MISSING_MSG]
                elif field.default is not _MISSING:
                    result[name] = field.default
                continue
            try:
                result[name] = field.load(value)
            except FieldError as exc:
                errors[name] = exc.as_list()
        if self.strict:
            for key in data:
                if key not in self.fields:
                    errors[key] = [UNKNOWN_MSG]
        if errors:
            raise ValidationError(errors)
        return result


def _describe(value: list[Any] | dict[Any, Any]) -> str:
    """`str(value)` for an error text; a container nested too deeply for `str` (the decoder
    accepts ~1000 levels, more than the interpreter's recursion limit) gets a placeholder."""
    try:
        return str(value)
    except RecursionError:
        return "<too deeply nested>"


class OneOf:
    """Discriminated union on a str field (e.g. `type` of invite_new)."""

    def __init__(self, discriminator: str, choices: Mapping[str, Schema]) -> None:
        self.discriminator = discriminator
        self.choices = dict(choices)

    def load(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ValidationError({"_schema": ["Invalid input type."]})
        kind = data.get(self.discriminator)
        if not kind:
            # the reference treats any falsy value (nil, "", 0...) as a missing key
            raise ValidationError({self.discriminator: [MISSING_MSG]})
        try:
            schema = self.choices.get(kind) if isinstance(kind, str) else None
        except TypeError:
            schema = None
        if schema is None:
            if isinstance(kind, (list, dict)):
                raise ValidationError({self.discriminator: [f"Invalid value: {_describe(kind)}"]})
            raise ValidationError({self.discriminator: [f"Unsupported value: {kind}"]})
        return schema.load(data)


AnySchema = Schema | OneOf
