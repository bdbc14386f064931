"""Random values and request maps for fuzzing, driven by a seeded `random.Random`.

`Gen.any_value()` draws a value of any msgpack type (edge cases favoured); `Gen.valid(field)`
draws a value that the field of a `parsec.api.schema` schema accepts, preferring the
"known" values of the test's organization (realm ids, user ids...) so that requests reach
the handlers, not only the validator; `Gen.request(spec)` builds a request for a command
from its schema, then drops fields, sets them to nil, replaces them by values of other
types and adds unknown keys.

Values are plain Python values plus the wire-level wrappers of `tests.fuzz.mpack`; encode
them with `mpack.pack(value, gen.rng)` (random, not always minimal, encodings).
"""

from __future__ import annotations

import os
import random
import string
import struct
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from parsec.api import ids
from parsec.api import schema as s
from parsec.api.protocol import ALL_COMMAND_SETS, CommandSpec
from tests.fuzz.mpack import F32, BadStr, Ext, Pairs, Raw, datetime_ext

DEFAULT_SEED = 20240611


def fuzz_seed() -> int:
    """`PARSEC_FUZZ_SEED`: an int, or `random` for a fresh seed (printed in failures)."""
    raw = os.environ.get("PARSEC_FUZZ_SEED", "").strip()
    if not raw:
        return DEFAULT_SEED
    if raw == "random":
        return random.SystemRandom().randrange(2**32)
    return int(raw)


def fuzz_scale() -> float:
    """`PARSEC_FUZZ_SCALE` multiplies the number of cases of every test (default 1)."""
    return float(os.environ.get("PARSEC_FUZZ_SCALE", "1") or 1)


SEED = fuzz_seed()


def rng_for(name: str) -> random.Random:
    return random.Random(f"{SEED}:{name}")


def cases(count: int) -> int:
    return max(1, int(count * fuzz_scale()))


def now() -> datetime:
    return datetime.now(tz=UTC)


INTS = [
    0, 1, -1, 31, 32, -32, -33, 127, 128, 255, 256, -128, -129, 65535, 65536, 2**31 - 1, 2**31,
    -(2**31), -(2**31) - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 1000, 1001,
]
FLOATS = [0.0, -0.0, 1.5, -1.5, float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5e-324, 50.0, 70.0]
TEXTS = [
    "", "a", " ", "alice", "alice@dev1", "bob", "ADMIN", "OWNER", "USER", "DEVICE", "READER",
    "\x00", "a\x00b", "𝄞", "😀" * 3, "🀄a", "e\u0301", "\u202e", "ǅ", "ﬀ", "é" * 16, "é" * 17,
    "x" * 32, "x" * 33, "a.b", "a@b@c", "alice\n", "a@b\n", "%s%n", "{0}", "<b>", "'\"",
    "\ufeff", "\U0010ffff", "null", "true", "0",
]
# ext codes the protocol does not define (1 = datetime, 2 = UUID, -1 = msgpack timestamp)
UNKNOWN_EXT_CODES = [-128, -100, -2, 0, 3, 4, 5, 42, 100, 127]
EXTREME_TIMESTAMPS = [0.0, -1.0, 1e9, 4102444800.0, -62135596800.0, 253402300799.0, -1e10, 1e11, 0.5]
POISON_TIMESTAMPS = [float("nan"), float("inf"), float("-inf"), 1e20, -1e20, 253402300800.0, -62135596801.0, 1e300]


# Fields whose valid values always come from the known ones (`send_email: true` writes a
# mocked e-mail file per request).
PINNED = {"send_email"}


class Gen:
    def __init__(self, rng: random.Random, known: Mapping[str, list[Any]] | None = None, *, poison: float = 0.04) -> None:
        self.rng = rng
        self.known = dict(known or {})
        # Probability that a drawn value makes the whole message undecodable.
        self.poison_rate = poison

    # ---- scalars -------------------------------------------------------------------------

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def integer(self) -> int:
        r = self.rng.random()
        if r < 0.6:
            return self.rng.choice(INTS)
        if r < 0.8:
            return self.rng.randint(-1000, 1000)
        return self.rng.randint(-(2**63), 2**64 - 1)

    def number(self) -> Any:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(FLOATS)
        if r < 0.7:
            return F32(self.rng.choice([0.0, 1.5, float("nan"), float("inf"), 3.4e38]))
        return self.rng.uniform(-1e12, 1e12)

    def text(self) -> str:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(TEXTS)
        if r < 0.7:
            return "".join(self.rng.choice(string.printable) for _ in range(self.rng.randint(1, 40)))
        if r < 0.9:
            # any Unicode scalar value, BMP or not (no surrogates: they cannot be UTF-8)
            chars = []
            for _ in range(self.rng.randint(1, 20)):
                code = self.rng.choice([self.rng.randint(0x20, 0xD7FF), self.rng.randint(0xE000, 0x10FFFF)])
                chars.append(chr(code))
            return "".join(chars)
        return self.rng.choice(["a", "é", "😀"]) * self.rng.choice([255, 256, 5000, 70000])

    def blob(self) -> bytes:
        r = self.rng.random()
        if r < 0.25:
            return b""
        if r < 0.5:
            return self.rng.randbytes(32)
        if r < 0.9:
            return self.rng.randbytes(self.rng.randint(1, 100))
        if r < 0.97:
            return self.rng.randbytes(self.rng.randint(1000, 70000))
        return bytes(1024 * 1024)  # the largest bin the protocol allows

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.rng.randbytes(16))

    def valid_datetime(self) -> datetime:
        r = self.rng.random()
        if r < 0.5:
            return now() + timedelta(seconds=self.rng.uniform(-30, 30))
        if r < 0.8:
            return datetime.fromtimestamp(self.rng.choice(EXTREME_TIMESTAMPS), tz=UTC)
        return datetime.fromtimestamp(self.rng.uniform(-6e10, 2.5e11), tz=UTC)

    def unknown_ext(self) -> Ext:
        if self.chance(0.2):
            # msgpack timestamp (ext -1), 32-bit form: a valid but foreign type
            return Ext(-1, struct.pack(">I", self.rng.randrange(2**32)))
        return Ext(self.rng.choice(UNKNOWN_EXT_CODES), self.rng.randbytes(self.rng.choice([0, 1, 2, 4, 8, 16, 17, 300])))

    def poison(self, *, small: bool = False) -> Any:
        """A value no server may decode (`small`: not the 1 MiB + 1 bin)."""
        value = self.rng.choice(
            [
                lambda: datetime_ext(self.rng.choice(POISON_TIMESTAMPS)),
                lambda: Ext(1, self.rng.randbytes(self.rng.choice([0, 1, 4, 7, 9, 16]))),
                lambda: Ext(2, self.rng.randbytes(self.rng.choice([0, 1, 8, 15, 17, 32]))),
                lambda: Ext(-1, self.rng.randbytes(self.rng.choice([0, 1, 5, 16]))),
                lambda: BadStr(self.rng.choice([b"\xff", b"\xc3", b"a\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"])),
                lambda: bytes(1024 * 1024 + 1),
                lambda: Raw(b"\x91" * 1100 + b"\xc0"),
            ]
        )()
        if small and isinstance(value, bytes):
            return BadStr(b"\xff")
        return value

    def nested(self) -> Raw:
        """Arrays or maps nested a few hundred levels deep (decodable: below msgpack's limit)."""
        # msgpack parses up to 1023 nested containers inside the root map
        depth = self.rng.choice([50, 300, 900, 1000, 1020])
        if self.chance(0.5):
            return Raw(b"\x91" * depth + b"\xc0")
        return Raw(b"\x81\xa1k" * depth + b"\xc0")

    # ---- any value -----------------------------------------------------------------------

    def key(self) -> Any:
        """A map key (any hashable msgpack value)."""
        return self.rng.choice(
            [self.text, self.integer, self.blob_small, lambda: None, lambda: self.chance(0.5), self.number_plain, self.uuid, self.valid_datetime]
        )()

    def blob_small(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, 8))

    def number_plain(self) -> float:
        return self.rng.choice([0.0, 1.5, -2.0, 1e300])

    def any_value(self, depth: int = 0) -> Any:
        if self.chance(self.poison_rate):
            return self.poison()
        kinds = [
            lambda: None,
            lambda: self.chance(0.5),
            self.integer,
            self.number,
            self.text,
            self.blob,
            self.uuid,
            self.valid_datetime,
            self.unknown_ext,
        ]
        if depth < 3:
            kinds += [
                lambda: [self.any_value(depth + 1) for _ in range(self.rng.randint(0, 4))],
                lambda: {self.key(): self.any_value(depth + 1) for _ in range(self.rng.randint(0, 4))},
            ]
        if depth == 0 and self.chance(0.05):
            return self.nested()
        return self.rng.choice(kinds)()

    def other_type(self, field: s.Field) -> Any:
        """A value of a msgpack type the field cannot take (best effort for exotic fields)."""
        for _ in range(20):
            value = self.any_value(1)
            if not _same_type(field, value):
                return value
        return self.unknown_ext()

    # ---- schema driven -------------------------------------------------------------------

    def _known(self, name: str | None) -> Any:
        if name is not None and self.known.get(name) and (name in PINNED or self.chance(0.7)):
            return self.rng.choice(self.known[name])
        return None

    def valid(self, field: Any, name: str | None = None) -> Any:
        """A value the field accepts (nil sometimes, where allowed)."""
        if getattr(field, "allow_none", False) and self.chance(0.2):
            return None
        known = self._known(name)
        if known is not None:
            return known
        if isinstance(field, s.Constant):
            return field.constant
        if isinstance(field, s.Enum):
            return self.rng.choice(sorted(field.values))
        if isinstance(field, s.Identifier):
            return self._identifier(field)
        if isinstance(field, s.HumanHandle):
            return [f"u{self.rng.randrange(10**6)}@example.com", "Some Body"]
        if isinstance(field, s.VerifyKey | s.PublicKey):
            return self.rng.randbytes(32)
        if isinstance(field, s.Bytes):
            return self.rng.randbytes(field.size) if field.size is not None else self.blob()
        if isinstance(field, s.Str):
            return self.text()
        if isinstance(field, s.Bool):
            return self.chance(0.5)
        if isinstance(field, s.Int):
            low = field.min if field.min is not None else -5
            high = field.max if field.max is not None else low + 100
            if self.chance(0.2):
                return high if field.max is not None else self.rng.choice([low, 2**63 - 1])
            return self.rng.randint(low, min(high, low + 100))
        if isinstance(field, s.Float):
            return self.rng.uniform(-1e6, 1e6)
        if isinstance(field, s.DateTime):
            return self.valid_datetime()
        if isinstance(field, s.Uuid):
            return self.uuid()
        if isinstance(field, s.List):
            return [self.valid(field.item) for _ in range(self.rng.randint(0, 3))]
        if isinstance(field, s.Tuple):
            return [self.valid(item) for item in field.items]
        if isinstance(field, s.Map):
            return {self.valid(field.key, "user_id"): self.valid(field.value) for _ in range(self.rng.randint(0, 3))}
        if isinstance(field, s.Nested):
            return self.baseline(field.schema)
        return self.any_value()

    def _identifier(self, field: s.Identifier) -> str:
        suffix = "".join(self.rng.choice(string.ascii_lowercase) for _ in range(6))
        if field.validator is ids.device_id:
            return f"{self.rng.choice(['alice', 'bob', suffix])}@dev{self.rng.randint(1, 3)}"
        if field.validator is ids.device_label:
            return self.rng.choice(["My laptop", "é" * 10, suffix])
        return self.rng.choice(["alice", "bob", "outsider", "ghost", suffix, "é" * 16])

    def baseline(self, schema: s.Schema | s.OneOf) -> dict[Any, Any]:
        if isinstance(schema, s.OneOf):
            schema = schema.choices[self.rng.choice(sorted(schema.choices))]
        return {name: self.valid(field, name) for name, field in schema.fields.items()}

    def mutate_value(self, field: Any, value: Any) -> Any:
        """Replace a present value: nil, another type, an edge value, or a nested mutation."""
        r = self.rng.random()
        if r < 0.12:
            return None
        if r < 0.5:
            return self.other_type(field)
        if r < 0.56:
            return self.nested()
        if r < 0.75:
            return self.edge_value(field)
        if isinstance(field, s.Nested) and isinstance(value, dict):
            return self.mutate_map(value, field.schema)
        if isinstance(field, s.List | s.Tuple) and isinstance(value, list) and value:
            index = self.rng.randrange(len(value))
            item_field = field.item if isinstance(field, s.List) else field.items[min(index, len(field.items) - 1)]
            return [*value[:index], self.mutate_value(item_field, value[index]), *value[index + 1 :]]
        if isinstance(field, s.Map) and self.chance(0.5):
            # any key, unhashable and duplicated ones included
            key = self.any_value(1) if self.chance(0.5) else self.key()
            return Pairs(((key, self.any_value(1)), (key, self.any_value(1))))
        return self.any_value()

    def edge_value(self, field: Any) -> Any:
        """A value of the right msgpack type that may still be wrong (range, size, content)."""
        if isinstance(field, s.Int):
            return self.rng.choice([field.min - 1 if field.min is not None else -(2**63), (field.max or 0) + 1, 2**64 - 1, -(2**63), 2**63 - 1, 0])
        if isinstance(field, s.VerifyKey | s.PublicKey):
            return self.rng.randbytes(self.rng.choice([0, 31, 33, 64]))
        if isinstance(field, s.Bytes):
            return self.rng.choice([b"", self.blob()])
        if isinstance(field, s.Str | s.Identifier | s.Enum | s.Constant):
            return self.text()
        if isinstance(field, s.DateTime):
            return datetime.fromtimestamp(self.rng.choice(EXTREME_TIMESTAMPS), tz=UTC)
        if isinstance(field, s.Uuid):
            return self.rng.choice([uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), self.uuid()])
        if isinstance(field, s.HumanHandle):
            return self.rng.choice([[], ["a"], ["a", "b", "c"], ["", "x"], ["x@y", "<z>"], [1, 2]])
        if isinstance(field, s.List | s.Tuple):
            return self.rng.choice([[], [None], [self.rng.choice([None, 0, "", b"x", []])] * self.rng.randint(1, 50)])
        if isinstance(field, s.Map | s.Nested):
            return self.rng.choice([{}, {self.key(): self.any_value(1)}, {None: None}])
        return self.any_value()

    def mutate_map(self, base: dict[Any, Any], schema: s.Schema | s.OneOf) -> dict[Any, Any]:
        fields = _fields_of(schema, base)
        msg = dict(base)
        rate = self.rng.choice([0.0, 0.2, 0.5, 1.0])
        for name in list(msg):
            if not self.chance(rate):
                continue
            r = self.rng.random()
            if r < 0.25:
                del msg[name]
            else:
                msg[name] = self.mutate_value(fields.get(name), msg[name])
        for _ in range(self.rng.choice([0, 0, 1, 3])):
            msg[self.key() if self.chance(0.5) else self.text()] = self.any_value()
        return msg

    def request(self, spec: CommandSpec, kind: str) -> dict[Any, Any]:
        """A request map for `spec` (its `cmd` included), mutated or, sometimes, left valid."""
        base = self.baseline(spec.req)
        msg = base if self.chance(0.15) else self.mutate_map(base, spec.req)
        if isinstance(spec.req, s.OneOf) and self.chance(0.2):
            # the discriminator decides which schema applies: worth extra attention
            msg[spec.req.discriminator] = self.mutate_value(s.Str(), msg.get(spec.req.discriminator))
        r = self.rng.random()
        if r < 0.9:
            msg = {"cmd": spec.name, **msg}
        elif r < 0.93:
            pass  # no cmd at all
        elif r < 0.97:
            msg["cmd"] = self.other_type(s.Str())
        else:
            others = sorted(set().union(*(set(t) for t in ALL_COMMAND_SETS.values())) - set(ALL_COMMAND_SETS[kind]))
            msg["cmd"] = self.rng.choice([*others, "user_find", "organization_create", spec.name.upper(), spec.name + "\x00", ""])
        if self.chance(0.3):
            items = list(msg.items())
            self.rng.shuffle(items)
            msg = dict(items)
        return msg


def _fields_of(schema: s.Schema | s.OneOf, data: dict[Any, Any]) -> dict[str, Any]:
    if isinstance(schema, s.OneOf):
        kind = data.get(schema.discriminator)
        chosen = schema.choices.get(kind) if isinstance(kind, str) else None
        if chosen is None:
            merged: dict[str, Any] = {}
            for choice in schema.choices.values():
                merged.update(choice.fields)
            return merged
        return dict(chosen.fields)
    return dict(schema.fields)


def _same_type(field: Any, value: Any) -> bool:
    """Whether `value` has the msgpack type `field` expects (nil counts as same when allowed)."""
    if value is None:
        return bool(getattr(field, "allow_none", False))
    if field is None or isinstance(field, s.Any_):
        return True
    checks: list[tuple[type, Any]] = [
        (s.Bool, bool),
        (s.Int, int),
        (s.Float, (int, float)),
        (s.DateTime, datetime),
        (s.Uuid, uuid.UUID),
        (s.Bytes, bytes),
        (s.Str, str),
        (s.Identifier, str),
        (s.Enum, str),
        (s.Constant, str),
        (s.HumanHandle, list),
        (s.List, list),
        (s.Tuple, list),
        (s.Map, dict),
        (s.Nested, dict),
    ]
    for field_type, value_type in checks:
        if isinstance(field, field_type):
            if value_type is int and isinstance(value, bool):
                return False
            return isinstance(value, value_type)
    return False
