"""Grain identity: type names, keys and their text form, following Orleans.

A grain is named by a :class:`GrainId`: a :class:`GrainType` plus a key, written
``"type/key"`` (``"cart/bob65"``). The rules are Orleans' own:

* **Type names by convention**: the class name, lowercased, without a trailing ``grain``
  (``ShoppingCartGrain`` -> ``shoppingcart``; a class named ``Grain`` stays ``grain``);
  a generic class gets a backtick and its arity (``DictGrain[K, V]`` -> ``dict`2``).
  An explicit name (``@grain_type("...")``) overrides the convention and keeps its case.
  Valid names hold ASCII letters, digits and ``- _ . @ =``, then optionally ```N``.
* **Keys** are strings. ``int`` keys are encoded as uppercase hex like .NET's
  ``long.ToString("X")`` (``42`` -> ``"2A"``, ``-1`` -> ``"FFFFFFFFFFFFFFFF"``); UUID keys
  as 32 lowercase hex digits; compound keys (int or UUID plus a string extension) as
  ``"{key}+{extension}"``. So ``42`` and ``"2A"`` name the same grain. Reading a key back
  as an int or a UUID follows Orleans' ``GrainIdKeyExtensions`` and ``GetPrimaryKey``.
* **Key text** is checked once, in :class:`GrainId`'s validator (so also by ``parse``):
  at most :data:`MAX_KEY_LENGTH` characters, not empty nor only whitespace (.NET's
  ``char.IsWhiteSpace``), and none of the characters that forge log lines or change how
  text displays: control characters (``Cc``), line and paragraph separators, Unicode's
  bidirectional controls, lone surrogates. Other format characters (``Cf``: zero-width
  joiners, soft hyphens, emoji tags) are allowed: real names and emoji need them. Ids are
  parsed at the first ``/``, so keys may contain ``/``.
* **Tokens**: :func:`escape_token` percent-encodes everything outside ``[A-Za-z0-9_-@=]``
  for NATS subjects and file names; :func:`unescape_token` reverses it.

May import: values and config.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
import uuid
from typing import TypeAlias

import attrs

from ._exceptions import GrainIdError, GrainKeyKindError

__all__ = [
    "MAX_KEY_LENGTH",
    "SINGLETON_KEY",
    "GrainId",
    "GrainKey",
    "GrainType",
    "check_key",
    "check_key_length",
    "encode_key",
    "escape_token",
    "unescape_token",
]

GrainKey: TypeAlias = str | int | uuid.UUID
"""What a grain key may be given as. Every kind encodes to a string (:func:`encode_key`)."""

SINGLETON_KEY = "default"
"""The key by convention for a grain type that has a single instance."""

MAX_KEY_LENGTH = 1024
"""The most characters an encoded key may have, extension included (:func:`check_key_length`)."""

_TYPE_CHARS = frozenset(string.ascii_letters + string.digits + "-_.@=")
_TOKEN_SAFE = frozenset(string.ascii_letters + string.digits + "_-@=")
_TOKEN_UNSAFE = re.compile(r"[^A-Za-z0-9_\-@=]")
_DIGITS = frozenset(string.digits)
_HEX = frozenset(string.hexdigits)
_UPPER_HEX = frozenset("0123456789ABCDEF")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MASK = 2**64 - 1
_ALLOWED_TYPE_CHARS = "ASCII letters, digits and - _ . @ = (plus `N for a generic's arity)"

# Whitespace as .NET's char.IsWhiteSpace has it (what Orleans' string.IsNullOrWhiteSpace
# uses): categories Zs, Zl and Zp, plus U+0009-U+000D and U+0085. Not str.isspace, which
# also counts the information separators U+001C-U+001F. Spelled out rather than computed
# from unicodedata at import; test_ids checks it against the categories.
_WHITESPACE = frozenset(
    "\t\n\v\f\r\x85 \xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
)
# Unicode's Bidi_Control characters (PropList.txt). They reorder how the text around them
# displays, so a key holding one can show up in a log or dashboard as a different key
# ("Trojan Source", CVE-2021-42574).
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _describe(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X})"


# --- type names ------------------------------------------------------------------------


def _check_type_name(_inst: object, _attr: object, value: str) -> None:
    if type(value) is str and value and _TYPE_CHARS.issuperset(value):
        return  # the common case: no arity, nothing to report
    if not isinstance(value, str):
        raise GrainIdError(f"a grain type name must be a str, got {type(value).__name__}")
    if not value:
        raise GrainIdError("a grain type name must not be empty")
    for ch in value:
        if ch in _TYPE_CHARS or ch == "`":
            continue
        if ch == "/":
            raise GrainIdError(
                f"grain type name {value!r} contains '/', which separates type from key in "
                "'type/key' ids; choose a name without '/'"
            )
        raise GrainIdError(
            f"grain type name {value!r} contains {_describe(ch)}; type names appear in ids, "
            f"logs, storage keys and NATS subjects, so only {_ALLOWED_TYPE_CHARS} are allowed"
        )
    base, _, arity = value.partition("`")
    if not base or not arity or not _DIGITS.issuperset(arity):
        raise GrainIdError(
            f"grain type name {value!r} has a misplaced '`'; a backtick may only appear once, "
            "between a name and the generic arity, e.g. dict`2"
        )


@attrs.frozen(order=True)
class GrainType:
    """The name of a kind of grain, e.g. ``shoppingcart`` or ``dict`2``.

    Build one from a class with :meth:`for_class`, or from a name: ``GrainType("cart")``.
    The name is validated on construction and kept as given (case preserved).
    """

    value: str = attrs.field(validator=_check_type_name)

    def __str__(self) -> str:
        return self.value

    @property
    def arity(self) -> int:
        """The number of type parameters of a generic grain type, 0 when not generic."""
        _, tick, arity = self.value.partition("`")
        return int(arity) if tick else 0

    @classmethod
    def for_class(cls, klass: type, explicit: str | None = None) -> GrainType:
        """The type name of grain class *klass*: *explicit* if given, else by convention.

        The convention (Orleans'): ``klass.__name__`` lowercased, a trailing ``grain``
        removed unless it is the whole name, and ```N`` appended when the class is generic
        with N unbound type parameters.
        """
        if explicit is not None:
            return cls(explicit)
        class_name = klass.__name__
        if not class_name.isascii():
            raise GrainIdError(
                f"class name {class_name!r} is not ASCII, so no grain type name can be derived "
                f'from it; give the class an explicit name with @grain_type("...")'
            )
        name = class_name.lower()
        if name.endswith("grain") and len(name) > len("grain"):
            name = name[: -len("grain")]
        params = getattr(klass, "__parameters__", ())
        if isinstance(params, tuple) and params:
            name = f"{name}`{len(params)}"
        try:
            return cls(name)
        except GrainIdError as exc:
            raise GrainIdError(
                f'{exc}; or give the class an explicit name with @grain_type("...")'
            ) from None


@functools.lru_cache(maxsize=4096)
def _grain_type_named(name: str) -> GrainType:
    return GrainType(name)


# --- keys ------------------------------------------------------------------------------


def _is_blank(text: str) -> bool:
    # Empty or only whitespace in .NET's sense (issuperset is True for "").
    return _WHITESPACE.issuperset(text)


def check_key_length(key: str, limit: int) -> None:
    """Raise :class:`GrainIdError` if the encoded *key* has more than *limit* characters.

    :class:`GrainId` checks every key against :data:`MAX_KEY_LENGTH`; a silo configured
    with a lower limit calls this with its own.
    """
    if len(key) > limit:
        shown = f"{key[:40]!r}..." if len(key) > 40 else repr(key)
        raise GrainIdError(
            f"grain key {shown} has {len(key)} characters, more than the limit of {limit}; "
            "hash or shorten the key (e.g. hashlib.sha256(key.encode()).hexdigest())"
        )


def _encode_int(key: int) -> str:
    if not _INT64_MIN <= key <= _INT64_MAX:
        raise GrainIdError(
            f"integer grain key {key} is out of range; integer keys are signed 64-bit "
            f"({_INT64_MIN} to {_INT64_MAX}); use a str or UUID key for larger values"
        )
    return format(key & _UINT64_MASK, "X")


def encode_key(key: GrainKey, key_ext: str | None = None) -> str:
    """Encode *key* (and the extension of a compound key) as the string naming the grain.

    ``int`` -> uppercase hex (64-bit two's complement when negative); ``UUID`` -> 32
    lowercase hex digits; ``str`` -> itself. A *key_ext* is appended after ``+``; it needs
    an int or UUID key and must not be empty or only whitespace (``None`` means none).
    """
    if isinstance(key, str):
        encoded = key
    elif isinstance(key, bool):
        raise GrainIdError(f"{key!r} is not a grain key; use an int, str or UUID, not a bool")
    elif isinstance(key, int):
        encoded = _encode_int(key)
    elif isinstance(key, uuid.UUID):
        encoded = key.hex
    else:
        raise GrainIdError(
            f"grain keys are str, int or uuid.UUID, got {type(key).__name__} {key!r}; "
            "convert it to one of those"
        )
    if key_ext is None:
        return encoded
    if not isinstance(key_ext, str):
        raise GrainIdError(f"a key extension must be a str, got {type(key_ext).__name__}")
    if isinstance(key, str):
        raise GrainIdError(
            f"key extension {key_ext!r} given with the string key {key!r}; compound keys "
            "are an int or UUID plus a string: put the extension into the string key"
        )
    # Orleans (string.IsNullOrWhiteSpace) drops a blank extension silently, so
    # get_grain(cls, 7, key_ext=" ") reaches grain 7. A blank extension is nearly always a
    # bug upstream (an unset field), and dropping it merges what the caller meant to keep
    # apart, so only None means "no extension" here.
    if _is_blank(key_ext):
        raise GrainIdError(
            f"key extension {key_ext!r} is empty or only whitespace; "
            "pass key_ext=None for a key without extension"
        )
    return f"{encoded}+{key_ext}"


def _forbidden(ch: str) -> str | None:
    """What *ch* is if keys must not contain it, else None."""
    if ch in _BIDI_CONTROLS:
        return "a bidirectional control"
    category = unicodedata.category(ch)
    if category == "Cc":
        return "a control character"
    if category in ("Zl", "Zp"):
        return "a line or paragraph separator"
    if category == "Cs":
        return "a lone surrogate"
    return None


def check_key(_inst: object, _attr: object, key: str) -> None:
    """An attrs validator: *key* is a valid encoded grain key (Orleans' rules, see
    docs/identity.md); :class:`~trio_grains.GrainIdError` saying why otherwise."""
    # The common case first. isprintable() is False for every character _forbidden names
    # (and for others we allow, which the loop below then lets through); among printable
    # characters only U+0020 is whitespace, so isspace() means "only spaces" here.
    if (
        type(key) is str
        and 0 < len(key) <= MAX_KEY_LENGTH
        and key.isprintable()
        and not key.isspace()
    ):
        return
    if not isinstance(key, str):
        raise GrainIdError(
            f"GrainId.key must be the encoded key str, got {type(key).__name__} {key!r}; "
            "use GrainId.create(grain_type, key) to encode int and UUID keys"
        )
    check_key_length(key, MAX_KEY_LENGTH)  # first: the checks below read every character
    if not key:
        raise GrainIdError("a grain key must not be empty; use SINGLETON_KEY for a singleton")
    if _is_blank(key):
        raise GrainIdError(
            f"grain key {key!r} is only whitespace; use a visible key, or SINGLETON_KEY "
            "for a singleton"
        )
    for index, ch in enumerate(key):
        what = _forbidden(ch)
        if what is not None:
            raise GrainIdError(
                f"grain key {key!r} contains {what} {_describe(ch)} at index {index}; "
                "remove it, or encode the text first (e.g. with escape_token)"
            )


def _split_ext(key: str, at: int) -> tuple[str, str | None]:
    if at < 0:
        return key, None
    return key[:at], key[at + 1 :]


def _try_int_key(key: str) -> tuple[int, str | None] | None:
    # Orleans' TryGetIntegerKey: the text before the first "+" must be read whole by
    # Utf8Parser.TryParse(..., out long, 'X'), which takes one or more ASCII hex digits of
    # either case, any number of them as long as the value fits in 64 bits (so leading zeros
    # beyond 16 digits are fine, 2**64 and above is not an integer key), and reinterprets
    # the unsigned value as a two's complement long.
    head, ext = _split_ext(key, key.find("+"))
    if not head or not _HEX.issuperset(head):
        return None
    digits = head.lstrip("0")
    if len(digits) > 16:
        return None
    value = int(digits, 16) if digits else 0
    if value > _INT64_MAX:
        value -= 2**64
    return value, ext


def _int_key_uuid(value: int) -> uuid.UUID:
    # Orleans' GetPrimaryKey() of an integer key N is
    # new Guid(0, 0, 0, (byte)N, (byte)(N >> 8), ..., (byte)(N >> 56)): the Guid's a, b and
    # c fields are zero, and its bytes d..k, which .NET prints in order as the last 16 hex
    # digits ("00000000-0000-0000-dddd-dddddddddddd"), are N's 8 bytes, low byte first.
    # uuid.UUID(bytes=...) takes the bytes in that printed order.
    return uuid.UUID(bytes=bytes(8) + (value & _UINT64_MASK).to_bytes(8, "little"))


def _try_uuid_key(key: str) -> tuple[uuid.UUID, str | None] | None:
    if len(key) == 32:
        head, ext = key, None
    elif len(key) > 32 and key[32] == "+":
        head, ext = key[:32], key[33:]
    else:
        return None
    if not _HEX.issuperset(head):
        return None
    return uuid.UUID(hex=head), ext


# --- ids -------------------------------------------------------------------------------


def _check_type(_inst: object, _attr: object, value: GrainType) -> None:
    if not isinstance(value, GrainType):
        raise GrainIdError(
            f"GrainId.type must be a GrainType, got {type(value).__name__} {value!r}; "
            "use GrainId.create(type_name, key) or GrainId.parse('type/key')"
        )


@attrs.frozen(order=True, cache_hash=True, slots=True)
class GrainId:
    """The identity of one grain: its type and its encoded key, written ``"type/key"``.

    Build one with :meth:`create` (from a type and an int, UUID or str key) or
    :meth:`parse` (from text). Ids compare, sort and hash by (type, key).
    """

    type: GrainType = attrs.field(validator=_check_type)
    key: str = attrs.field(validator=check_key)

    def __str__(self) -> str:
        return f"{self.type.value}/{self.key}"

    @classmethod
    def parse(cls, text: str) -> GrainId:
        """Parse ``"type/key"`` at the first ``/`` (so the key may contain ``/``).

        The key is checked as any key is (length, whitespace, forbidden characters).
        """
        if not isinstance(text, str):
            raise GrainIdError(f"a grain id text must be a str, got {type(text).__name__}")
        type_name, slash, key = text.partition("/")
        if not slash:
            raise GrainIdError(
                f"{text!r} is not a grain id: expected 'type/key', e.g. 'cart/bob65'"
            )
        if not type_name:
            raise GrainIdError(f"grain id {text!r} has an empty type name before the '/'")
        if not key:
            raise GrainIdError(f"grain id {text!r} has an empty key after the '/'")
        return cls(_grain_type_named(type_name), key)

    @classmethod
    def create(
        cls, grain_type: GrainType | str, key: GrainKey, key_ext: str | None = None
    ) -> GrainId:
        """The id of the grain of *grain_type* with *key* (plus *key_ext* for compound keys)."""
        if isinstance(grain_type, str):
            grain_type = _grain_type_named(grain_type)
        return cls(grain_type, encode_key(key, key_ext))

    @classmethod
    def from_token(cls, token: str) -> GrainId:
        """The id whose :attr:`token` is *token*."""
        return cls.parse(unescape_token(token))

    @property
    def token(self) -> str:
        """``str(self)`` escaped for NATS subject tokens and file names."""
        return escape_token(str(self))

    def key_as_int(self) -> tuple[int, str | None]:
        """The integer key and its extension (None without ``+``), as Orleans decodes them.

        The part before the first ``+`` must be hex digits (either case, leading zeros
        allowed) whose value fits in 64 bits; it is read as two's complement, so
        ``"2A"``, ``"2a"`` and ``"00000000000000000002A"`` are 42 (though three different
        grains), and ``"FFFFFFFFFFFFFFFF"`` is -1.
        """
        decoded = _try_int_key(self.key)
        if decoded is None:
            raise GrainKeyKindError(
                f"grain {str(self)!r} has the key {self.key!r}, which is not an integer key "
                "(integer keys are hex, e.g. 2A for 42); use primary_key for string keys"
            )
        return decoded

    def key_as_uuid(self) -> tuple[uuid.UUID, str | None]:
        """The UUID key and its extension (None without ``+``), as Orleans decodes them.

        Only a UUID key (32 hex digits, optionally ``+extension``) has one; see
        :meth:`primary_key_uuid` for the UUID Orleans also gives integer keys.
        """
        decoded = _try_uuid_key(self.key)
        if decoded is None:
            raise GrainKeyKindError(
                f"grain {str(self)!r} has the key {self.key!r}, which is not a UUID key "
                "(UUID keys are 32 hex digits, optionally followed by +extension); "
                "use primary_key for string keys"
            )
        return decoded

    def primary_key_uuid(self) -> tuple[uuid.UUID, str | None]:
        """The UUID Orleans' ``GetPrimaryKey(out keyExt)`` gives, and the extension.

        A UUID key is itself (:meth:`key_as_uuid`). An integer key N becomes the UUID
        whose first 8 bytes are zero and whose last 8 are N's, low byte first: 42 ->
        ``00000000-0000-0000-2a00-000000000000``, -1 ->
        ``00000000-0000-0000-ffff-ffffffffffff``. A string key raises
        :class:`GrainKeyKindError`.
        """
        decoded = _try_uuid_key(self.key)
        if decoded is not None:
            return decoded
        as_int = _try_int_key(self.key)
        if as_int is None:
            raise GrainKeyKindError(
                f"grain {str(self)!r} has the key {self.key!r}, which is neither a UUID nor "
                "an integer key; use primary_key for string keys"
            )
        value, ext = as_int
        return _int_key_uuid(value), ext


# --- tokens ----------------------------------------------------------------------------


def escape_token(s: str) -> str:
    """Percent-encode (UTF-8, uppercase hex) every character outside ``[A-Za-z0-9_-@=]``.

    The result is safe as a NATS subject token or a file name; :func:`unescape_token`
    reverses it.
    """
    if _TOKEN_SAFE.issuperset(s):
        return s
    return _TOKEN_UNSAFE.sub(lambda m: _percent(m.group(), s), s)  # the safe runs in C


def _percent(ch: str, s: str) -> str:
    try:
        data = ch.encode("utf-8")
    except UnicodeEncodeError:
        raise GrainIdError(
            f"cannot escape {s!r}: it contains {_describe(ch)}, a lone surrogate"
        ) from None
    return "".join(f"%{byte:02X}" for byte in data)


def unescape_token(s: str) -> str:
    """Reverse :func:`escape_token`. Input it cannot have produced raises GrainIdError."""
    if _TOKEN_SAFE.issuperset(s):
        return s
    parts: list[str] = []
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch in _TOKEN_SAFE:
            parts.append(ch)
            i += 1
            continue
        if ch != "%":
            raise GrainIdError(
                f"token {s!r} contains {_describe(ch)} unescaped; tokens hold only "
                "A-Z a-z 0-9 _ - @ = and %XX escapes (see escape_token)"
            )
        start = i
        run = bytearray()
        while i < n and s[i] == "%":
            digits = s[i + 1 : i + 3]
            if len(digits) != 2 or not _UPPER_HEX.issuperset(digits):
                raise GrainIdError(
                    f"token {s!r} has a malformed escape at index {i}; "
                    "'%' must be followed by two uppercase hex digits"
                )
            run.append(int(digits, 16))
            i += 3
        try:
            text = run.decode("utf-8")
        except UnicodeDecodeError:
            raise GrainIdError(
                f"token {s!r} has escapes at index {start} that are not valid UTF-8"
            ) from None
        for decoded in text:
            if decoded in _TOKEN_SAFE:
                raise GrainIdError(
                    f"token {s!r} escapes {decoded!r} at index {start}, which escape_token "
                    "never escapes; write it as is"
                )
        parts.append(text)
    return "".join(parts)
