"""Grain identity follows Orleans' rules (GrainIdKeyExtensions, GrainTypeResolver)."""

from __future__ import annotations

import sys
import unicodedata
import uuid
from collections.abc import Callable
from typing import Generic, TypeVar

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import trio_grains
from trio_grains._exceptions import GrainIdError, GrainKeyKindError
from trio_grains._ids import (
    _WHITESPACE,
    MAX_KEY_LENGTH,
    SINGLETON_KEY,
    GrainId,
    GrainType,
    check_key_length,
    encode_key,
    escape_token,
    unescape_token,
)

K = TypeVar("K")
V = TypeVar("V")

U = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e")


# --- type names ------------------------------------------------------------------------


class ShoppingCartGrain:
    pass


class Grain:
    pass


class GrainGrain:
    pass


class MyGrainX:
    pass


class DictGrain(Generic[K, V]):
    pass


class IntDictGrain(DictGrain[int, str]):
    pass


class KeyedDictGrain(DictGrain[int, V]):
    pass


@pytest.mark.parametrize(
    ("klass", "expected"),
    [
        (ShoppingCartGrain, "shoppingcart"),
        (Grain, "grain"),
        (GrainGrain, "grain"),
        (MyGrainX, "mygrainx"),
    ],
)
def test_type_name_by_convention(klass: type, expected: str) -> None:
    assert GrainType.for_class(klass) == GrainType(expected)


def test_generic_class_gets_arity() -> None:
    grain_type = GrainType.for_class(DictGrain)
    assert str(grain_type) == "dict`2"
    assert grain_type.arity == 2


@pytest.mark.skipif(sys.version_info < (3, 12), reason="PEP 695 syntax needs Python 3.12")
def test_generic_class_pep695_gets_arity() -> None:
    namespace: dict[str, object] = {}
    exec("class PairGrain[A, B]:\n    pass\n", namespace)
    klass = namespace["PairGrain"]
    assert isinstance(klass, type)
    assert str(GrainType.for_class(klass)) == "pair`2"


def test_bound_subclass_is_not_generic() -> None:
    assert str(GrainType.for_class(IntDictGrain)) == "intdict"
    assert GrainType.for_class(IntDictGrain).arity == 0
    assert str(GrainType.for_class(KeyedDictGrain)) == "keyeddict`1"


def test_non_ascii_class_name_needs_explicit_name() -> None:
    class Warenkörb:
        pass

    with pytest.raises(GrainIdError, match="grain_type"):
        GrainType.for_class(Warenkörb)
    assert str(GrainType.for_class(Warenkörb, "Basket")) == "Basket"


def test_explicit_name_overrides_convention_and_keeps_case() -> None:
    assert str(GrainType.for_class(ShoppingCartGrain, "Cart.V2")) == "Cart.V2"
    assert GrainType("Cart") != GrainType("cart")


@pytest.mark.parametrize(
    ("name", "in_message"),
    [
        ("cart/v2", "separates type from key"),
        ("shopping cart", "' ' (U+0020)"),
        ("warenkörb", "'ö' (U+00F6)"),
        ("a*b", "'*' (U+002A)"),
        ("", "empty"),
        ("dict`", "e.g. dict`2"),
        ("`2", "e.g. dict`2"),
        ("dict`2`3", "e.g. dict`2"),
        ("dict`x", "e.g. dict`2"),
    ],
)
def test_invalid_type_names_are_rejected(name: str, in_message: str) -> None:
    with pytest.raises(GrainIdError) as info:
        GrainType(name)
    assert in_message in str(info.value)


def test_type_name_allowed_characters() -> None:
    for name in ["a-b_c.d@e=f", "X9", "dict`2", "a`10"]:
        assert GrainType(name).value == name
    assert GrainType("a`10").arity == 10


# --- key encoding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "encoded"),
    [
        (0, "0"),
        (42, "2A"),
        (255, "FF"),
        (-1, "FFFFFFFFFFFFFFFF"),
        (-42, "FFFFFFFFFFFFFFD6"),
        (2**63 - 1, "7FFFFFFFFFFFFFFF"),
        (-(2**63), "8000000000000000"),
    ],
)
def test_int_key_encoding(key: int, encoded: str) -> None:
    assert encode_key(key) == encoded


@pytest.mark.parametrize("key", [2**63, -(2**63) - 1, 2**64])
def test_int_key_out_of_range(key: int) -> None:
    with pytest.raises(GrainIdError, match="signed 64-bit"):
        encode_key(key)


def test_bool_and_other_types_are_not_keys() -> None:
    with pytest.raises(GrainIdError, match="bool"):
        encode_key(True)
    with pytest.raises(GrainIdError, match="float"):
        encode_key(1.5)  # type: ignore[arg-type]


def test_uuid_key_encoding() -> None:
    assert encode_key(U) == "0f8fad5bd9cb469fa16570867728950e"


def test_str_key_is_kept_as_given() -> None:
    assert encode_key("Bob 65/x+y") == "Bob 65/x+y"


def test_compound_keys() -> None:
    assert encode_key(42, "eu") == "2A+eu"
    assert encode_key(-1, "a+b") == "FFFFFFFFFFFFFFFF+a+b"
    assert encode_key(U, "eu") == "0f8fad5bd9cb469fa16570867728950e+eu"
    assert encode_key(42, " eu ") == "2A+ eu "  # only a blank extension is refused
    assert encode_key(42, None) == "2A"
    assert encode_key(U, None) == U.hex


# Orleans treats these as "no extension" (string.IsNullOrWhiteSpace); we refuse them, and
# "whitespace" is .NET's: NBSP, U+2028 and the ideographic space are, U+200B is not.
BLANK_EXTENSIONS = ["", " ", "\t\n", "\xa0", "\u2028", "\u3000 \u2009"]


@pytest.mark.parametrize("blank", BLANK_EXTENSIONS)
def test_blank_extension_is_rejected(blank: str) -> None:
    for key in (42, U):
        with pytest.raises(GrainIdError, match="empty or only whitespace") as info:
            encode_key(key, blank)
        assert "key_ext=None" in str(info.value)
        with pytest.raises(GrainIdError, match="empty or only whitespace"):
            GrainId.create("counter", key, blank)


def test_not_net_whitespace_extension_is_not_blank() -> None:
    # U+200B is Cf, not whitespace in .NET: a (strange but) real extension.
    assert encode_key(42, "\u200b") == "2A+\u200b"
    # U+001C is whitespace to str.isspace but not to .NET: it is not "blank" but a control
    # character, refused as such with its position in the encoded key.
    with pytest.raises(GrainIdError, match="control character") as info:
        GrainId.create("counter", 42, "\x1c")
    assert "U+001C) at index 3" in str(info.value)


class IdentityGrain(trio_grains.Grain):
    async def key(self) -> str:
        return self.primary_key


async def test_get_grain_rejects_blank_extension_and_key() -> None:
    async with trio_grains.open_silo(grains=[IdentityGrain]) as silo:
        with pytest.raises(GrainIdError, match="key_ext=None"):
            silo.get_grain(IdentityGrain, 7, key_ext="")
        with pytest.raises(GrainIdError, match="only whitespace"):
            silo.get_grain(IdentityGrain, "\u3000")
        assert await silo.get_grain(IdentityGrain, 7, key_ext="eu").key() == "7+eu"


def test_extension_with_str_key_is_rejected() -> None:
    for ext in ["eu", " ", ""]:
        with pytest.raises(GrainIdError, match="compound keys"):
            encode_key("bob", ext)


def test_int_and_hex_str_name_the_same_grain() -> None:
    assert GrainId.create("counter", 42) == GrainId.create("counter", "2A")
    assert GrainId.create("counter", U) == GrainId.create("counter", U.hex)
    assert GrainId.create("counter", 7, "eu") == GrainId.create("counter", "7+eu")


# --- key decoding ----------------------------------------------------------------------


def test_int_key_decoding() -> None:
    assert GrainId.parse("c/2A").key_as_int() == (42, None)
    assert GrainId.parse("c/2a").key_as_int() == (42, None)
    assert GrainId.parse("c/FFFFFFFFFFFFFFFF").key_as_int() == (-1, None)
    assert GrainId.parse("c/000000000000002A").key_as_int() == (42, None)
    assert GrainId.parse("c/2A+eu+x").key_as_int() == (42, "eu+x")
    assert GrainId.parse("c/2A+").key_as_int() == (42, "")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("00000000000000002A", (42, None)),  # 18 digits: Orleans reads it as 42
        ("0" * 1000 + "2A", (42, None)),
        ("00000000000000000", (0, None)),
        ("0FFFFFFFFFFFFFFFF", (-1, None)),  # 17 digits, value 2**64 - 1: fits, so -1
        ("00000000000000008000000000000000", (-(2**63), None)),  # also a UUID key
        ("000000000000000000007+eu", (7, "eu")),
    ],
)
def test_int_key_with_leading_zeros_beyond_16_digits(
    key: str, expected: tuple[int, str | None]
) -> None:
    assert GrainId.create("c", key).key_as_int() == expected
    assert GrainId.parse(f"c/{key}").key_as_int() == expected


def _dotnet_try_parse_int64_hex(text: str) -> int | None:
    """What Orleans' TryGetIntegerKey gets for *text*, the key before its first "+".

    A port of .NET's Utf8Parser.TryParseUInt64X (used by Utf8Parser.TryParse(..., out long,
    'X') and reinterpreted as signed) plus Orleans' check that it read the whole text:
    overflow is checked per digit from the 17th on, so leading zeros never overflow.
    """
    hex_value = {c: int(c, 16) for c in "0123456789abcdefABCDEF"}
    if not text or text[0] not in hex_value:
        return None
    parsed = hex_value[text[0]]
    for index, ch in enumerate(text[1:], start=1):
        if ch not in hex_value:
            return None  # bytesConsumed = index != len(text): Orleans says no
        if index >= 16 and parsed > (2**64 - 1) // 0x10:
            return None  # overflow
        parsed = (parsed << 4) + hex_value[ch]
    return parsed - 2**64 if parsed >= 2**63 else parsed


@given(
    st.text("0", max_size=24),
    st.text(alphabet="00000123456789abcdefABCDEFgx +", min_size=1, max_size=24),
)
@example("", "10000000000000000")  # 2**64: overflows
@example("0000", "FFFFFFFFFFFFFFFFF")  # 17 significant digits: overflows
@example("0000", "FFFFFFFFFFFFFFFF+x")  # leading zeros, 16 digits: -1
@example("0", "8000000000000000")  # -2**63
@example("000", "0")
@example("", "2A g")
def test_int_key_decoding_matches_dotnet_parser(zeros: str, rest: str) -> None:
    text = zeros + rest
    try:
        grain_id = GrainId.create("c", text)
    except GrainIdError:
        assert not text.strip()
        return
    head = text.partition("+")[0]
    expected = _dotnet_try_parse_int64_hex(head)
    if expected is None:
        with pytest.raises(GrainKeyKindError):
            grain_id.key_as_int()
    else:
        ext = text.partition("+")[2] if "+" in text else None
        assert grain_id.key_as_int() == (expected, ext)


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.integers(0, 40))
def test_int_key_any_number_of_leading_zeros(value: int, zeros: int) -> None:
    key = "0" * zeros + format(value & (2**64 - 1), "X")
    assert GrainId.create("c", key).key_as_int() == (value, None)


@pytest.mark.parametrize(
    "key",
    [
        "bob65",
        "1FFFFFFFFFFFFFFFF",
        "10000000000000000",  # 2**64: too large for 64 bits, however written
        "000010000000000000000",
        "+eu",
        "0x2A",
        "2_A",
        " 2A",
        "٣",
        "\uff12\uff21",  # fullwidth 2A: not ASCII hex
    ],
)
def test_non_int_keys_are_not_decoded_as_int(key: str) -> None:
    grain_id = GrainId.create("cart", key)
    with pytest.raises(GrainKeyKindError) as info:
        grain_id.key_as_int()
    assert f"grain 'cart/{key}' has the key '{key}', which is not an integer key" in str(info.value)


def test_uuid_key_decoding() -> None:
    assert GrainId.create("c", U).key_as_uuid() == (U, None)
    assert GrainId.create("c", U.hex.upper()).key_as_uuid() == (U, None)
    assert GrainId.create("c", U, "eu+x").key_as_uuid() == (U, "eu+x")


@pytest.mark.parametrize("key", ["bob", U.hex[:31], U.hex + "0", U.hex + "-eu", str(U), "g" * 32])
def test_non_uuid_keys_are_not_decoded_as_uuid(key: str) -> None:
    with pytest.raises(GrainKeyKindError, match="not a UUID key"):
        GrainId.create("c", key).key_as_uuid()


# Orleans' GrainExtensions.GetPrimaryKey(out keyExt) tries the Guid key first and then,
# for an integer key N, returns
#     new Guid(0, 0, 0, (byte)N, (byte)(N >> 8), (byte)(N >> 16), (byte)(N >> 24),
#              (byte)(N >> 32), (byte)(N >> 40), (byte)(N >> 48), (byte)(N >> 56))
# (the same Guid the legacy UniqueKey.ConvertToGuid gives for N0 = 0, N1 = (ulong)N).
# Guid(int a, short b, short c, byte d, ..., byte k) prints as
# "aaaaaaaa-bbbb-cccc-ddee-ffgghhiijjkk", so the expected strings below are: three zero
# fields, then N's bytes from the lowest up, each as two hex digits.
#   42 = 0x2A                 -> d = 2a, the rest 00
#   -1 = 0xFFFFFFFFFFFFFFFF   -> all eight bytes ff
#   0x0123456789ABCDEF        -> ef cd ab 89 67 45 23 01
#   -2**63 = 0x8000000000000000 -> 00 ... 00 80
@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (42, "00000000-0000-0000-2a00-000000000000"),
        (-1, "00000000-0000-0000-ffff-ffffffffffff"),
        (0x0123456789ABCDEF, "00000000-0000-0000-efcd-ab8967452301"),
        (-(2**63), "00000000-0000-0000-0000-000000000080"),
        (0, "00000000-0000-0000-0000-000000000000"),
    ],
)
def test_primary_key_uuid_of_int_key_is_orleans_guid(key: int, expected: str) -> None:
    assert GrainId.create("c", key).primary_key_uuid() == (uuid.UUID(expected), None)
    assert GrainId.create("c", key, "eu").primary_key_uuid() == (uuid.UUID(expected), "eu")


def test_primary_key_uuid_prefers_the_uuid_key() -> None:
    assert GrainId.create("c", U, "eu").primary_key_uuid() == (U, "eu")
    # 32 hex digits are a Guid key before they are an integer key, as in Orleans: 7 read as
    # an integer would be 00000000-0000-0000-0700-000000000000.
    key = "0" * 31 + "7"
    assert GrainId.create("c", key).key_as_int() == (7, None)
    assert GrainId.create("c", key).primary_key_uuid() == (uuid.UUID(int=7), None)
    with pytest.raises(GrainKeyKindError, match="neither a UUID nor an integer key"):
        GrainId.create("c", "bob").primary_key_uuid()
    with pytest.raises(GrainKeyKindError, match="not a UUID key"):
        GrainId.create("c", 42).key_as_uuid()  # the strict reading stays strict


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_primary_key_uuid_of_int_key_round_trip(value: int) -> None:
    got, ext = GrainId.create("c", value).primary_key_uuid()
    assert ext is None
    assert got.bytes[:8] == bytes(8)
    assert int.from_bytes(got.bytes[8:], "little", signed=True) == value


# --- ids -------------------------------------------------------------------------------


def test_parse_at_first_slash() -> None:
    grain_id = GrainId.parse("a/b/c")
    assert grain_id.type == GrainType("a")
    assert grain_id.key == "b/c"
    assert str(grain_id) == "a/b/c"


@pytest.mark.parametrize(
    ("text", "in_message"),
    [
        ("cart", "expected 'type/key'"),
        ("/bob", "empty type name"),
        ("cart/", "empty key"),
        ("my cart/bob", "U+0020"),
    ],
)
def test_parse_errors(text: str, in_message: str) -> None:
    with pytest.raises(GrainIdError) as info:
        GrainId.parse(text)
    assert in_message in str(info.value)


def test_constructor_validates() -> None:
    with pytest.raises(GrainIdError, match=r"GrainId\.create"):
        GrainId("cart", "bob")  # type: ignore[arg-type]
    with pytest.raises(GrainIdError, match=r"GrainId\.create"):
        GrainId(GrainType("cart"), 42)  # type: ignore[arg-type]


def test_ordering_and_hashing() -> None:
    ids = [GrainId.parse(t) for t in ["b/1", "a/2", "a/10", "b/0"]]
    assert [str(i) for i in sorted(ids)] == ["a/10", "a/2", "b/0", "b/1"]
    assert GrainType("a") < GrainType("b")
    assert hash(GrainId.parse("a/2")) == hash(GrainId.create(GrainType("a"), 2))
    assert len({GrainId.parse("a/2A"), GrainId.create("a", 42), GrainId.parse("a/2a")}) == 2


@pytest.mark.parametrize(
    ("key", "char", "index"),
    [
        ("a\x00b", "U+0000", 1),
        ("a\nb", "U+000A", 1),
        ("\x7f", "U+007F", 0),
        ("x\x85", "U+0085", 1),
        ("ab\x1c", "U+001C", 2),
        ("a\u200bb\x1b", "U+001B", 3),
    ],
)
def test_keys_with_control_characters_are_rejected(key: str, char: str, index: int) -> None:
    with pytest.raises(GrainIdError, match="control character") as info:
        GrainId.create("cart", key)
    assert f"{char}) at index {index};" in str(info.value)
    assert "remove it" in str(info.value)
    with pytest.raises(GrainIdError, match="control character") as info:
        GrainId.create("cart", 42, key)
    assert f"{char}) at index {index + 3};" in str(info.value)  # after "2A+"


@pytest.mark.parametrize(
    ("key", "what", "where"),
    [
        ("ab\u2028", "a line or paragraph separator", "U+2028) at index 2"),
        ("\u2029x", "a line or paragraph separator", "U+2029) at index 0"),
        ("admin\u202e\u2066txt", "a bidirectional control", "U+202E) at index 5"),
        ("x\u061c", "a bidirectional control", "U+061C) at index 1"),
        ("x\u200f", "a bidirectional control", "U+200F) at index 1"),
        ("a\ud800", "a lone surrogate", "U+D800) at index 1"),
    ],
)
def test_keys_with_separators_bidi_controls_or_surrogates_are_rejected(
    key: str, what: str, where: str
) -> None:
    with pytest.raises(GrainIdError) as info:
        GrainId.create("cart", key)
    assert what in str(info.value)
    assert where in str(info.value)
    with pytest.raises(GrainIdError):
        GrainId.parse(f"cart/{key}")


def test_which_characters_keys_refuse() -> None:
    # Every Cc, every Zl/Zp and Unicode's 12 Bidi_Control characters are refused; every
    # other Cf character (zero-width joiners, soft hyphen, emoji tags, ...) is allowed.
    bidi = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
    refused: list[int] = []
    for code in range(0x110000):
        category = unicodedata.category(chr(code))
        if category not in ("Cc", "Cf", "Zl", "Zp"):
            continue
        try:
            GrainId.create("cart", f"k{chr(code)}")
        except GrainIdError:
            refused.append(code)
        else:
            assert category == "Cf", hex(code)
    expected = {
        c for c in range(0x110000) if unicodedata.category(chr(c)) in ("Cc", "Zl", "Zp")
    } | bidi
    assert set(refused) == expected


def test_empty_key_is_rejected() -> None:
    with pytest.raises(GrainIdError, match="empty"):
        GrainId.create("cart", "")


@pytest.mark.parametrize("key", [" ", "   ", "\u3000", "\xa0\u2009", "\u1680", "\t", " \r\n"])
def test_whitespace_only_keys_are_rejected(key: str) -> None:
    with pytest.raises(GrainIdError, match="only whitespace"):
        GrainId.create("cart", key)
    with pytest.raises(GrainIdError, match="only whitespace"):
        GrainId.parse(f"cart/{key}")


def test_whitespace_is_dotnet_whitespace() -> None:
    # char.IsWhiteSpace: categories Zs, Zl, Zp, plus U+0009-U+000D and U+0085.
    dotnet = {chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) in ("Zs", "Zl", "Zp")}
    dotnet |= {"\t", "\n", "\v", "\f", "\r", "\x85"}
    assert dotnet == _WHITESPACE
    # Python's isspace also counts U+001C-U+001F; those keys are refused as control
    # characters, not as whitespace.
    for ch in "\x1c\x1d\x1e\x1f":
        assert ch.isspace()
        with pytest.raises(GrainIdError, match="control character"):
            GrainId.create("cart", ch)
    # U+200B and U+180E look blank but are Cf to .NET (and Unicode): allowed keys.
    for key in ["\u200b", "\u180e"]:
        assert GrainId.create("cart", key).key == key


def test_unicode_and_punctuation_keys_are_allowed() -> None:
    for key in [
        "Warenkörb",
        "日本",
        "a b",
        " bob ",
        "x/y+z",
        "a\u00a0b",
        "\u200b",
        "🛒",
        "👩\u200d💻",  # emoji ZWJ sequence
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with ZWNJ
        "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # tag sequence
        "soft\u00adhyphen",
    ]:
        grain_id = GrainId.create("cart", key)
        assert grain_id.key == key
        assert GrainId.parse(str(grain_id)) == grain_id


# --- key length ------------------------------------------------------------------------


def test_key_length_limit() -> None:
    assert MAX_KEY_LENGTH == 1024
    assert GrainId.create("c", "k" * MAX_KEY_LENGTH).key == "k" * 1024
    assert len(GrainId.create("c", 7, "e" * 1022).key) == 1024  # "7+" and the extension
    makers: list[Callable[[], GrainId]] = [
        lambda: GrainId.create("c", "k" * 1025),
        lambda: GrainId.create("c", 7, "e" * 1023),
        lambda: GrainId.create("c", U, "e" * (1024 - 32)),
        lambda: GrainId.parse("c/" + "k" * 1025),
        lambda: GrainId(GrainType("c"), "k" * 1025),
        lambda: GrainId.from_token("c%2F" + "k" * 1025),
    ]
    for make in makers:
        with pytest.raises(GrainIdError) as info:
            make()
        message = str(info.value)
        assert "more than the limit of 1024" in message
        assert "hash or shorten the key" in message


def test_key_length_checked_before_characters_and_message_is_short() -> None:
    with pytest.raises(GrainIdError) as info:
        GrainId.create("c", "\x00" + " " * 10**6)
    message = str(info.value)
    assert "1000001 characters, more than the limit of 1024" in message
    assert len(message) < 300


def test_check_key_length() -> None:
    check_key_length("ab", 2)
    with pytest.raises(GrainIdError, match=r"'abc' has 3 characters, more than the limit of 2"):
        check_key_length("abc", 2)


def test_singleton_key() -> None:
    assert SINGLETON_KEY == "default"
    assert str(GrainId.create("registry", SINGLETON_KEY)) == "registry/default"


# --- tokens ----------------------------------------------------------------------------


def test_escape_token() -> None:
    assert escape_token("Az09_-@=") == "Az09_-@="
    assert escape_token("cart/bob 65.x") == "cart%2Fbob%2065%2Ex"
    assert escape_token("%*>`+") == "%25%2A%3E%60%2B"
    assert escape_token("ö") == "%C3%B6"
    assert escape_token("🛒") == "%F0%9F%9B%92"
    assert unescape_token("cart%2Fbob%2065%2Ex") == "cart/bob 65.x"
    grain_id = GrainId.create("dict`2", "a/b c")
    assert grain_id.token == "dict%602%2Fa%2Fb%20c"
    assert GrainId.from_token(grain_id.token) == grain_id


@pytest.mark.parametrize(
    ("token", "in_message"),
    [
        ("a%2", "malformed escape"),
        ("a%2f", "malformed escape"),
        ("a%G0", "malformed escape"),
        ("a.b", "'.' (U+002E) unescaped"),
        ("%41", "never escapes"),
        ("%C3", "not valid UTF-8"),
        ("%ED%A0%80", "not valid UTF-8"),
    ],
)
def test_unescape_token_rejects_malformed_tokens(token: str, in_message: str) -> None:
    with pytest.raises(GrainIdError) as info:
        unescape_token(token)
    assert in_message in str(info.value)


# --- properties ------------------------------------------------------------------------

key_chars = st.characters(
    exclude_categories=["Cc", "Cs", "Zl", "Zp"],
    exclude_characters="\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069",
)
type_names = st.from_regex(r"[A-Za-z0-9_.@=-]+(`[0-9]+)?", fullmatch=True)
non_blank = st.text(key_chars, min_size=1, max_size=200).filter(lambda s: not s.isspace())
str_keys = non_blank
extensions = st.none() | non_blank
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
grain_ids = st.builds(
    GrainId.create,
    type_names,
    st.one_of(str_keys, int64, st.uuids()),
) | st.builds(GrainId.create, type_names, int64 | st.uuids(), extensions)


@given(grain_ids)
def test_text_and_token_round_trip(grain_id: GrainId) -> None:
    assert GrainId.parse(str(grain_id)) == grain_id
    token = grain_id.token
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-@=%")
    assert GrainId.from_token(token) == grain_id


@given(st.text())
def test_escape_token_round_trip(text: str) -> None:
    try:
        token = escape_token(text)
    except GrainIdError:
        assert any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)
    else:
        assert unescape_token(token) == text


@given(int64, extensions)
def test_int_key_round_trip(value: int, ext: str | None) -> None:
    grain_id = GrainId.create("counter", value, ext)
    assert grain_id.key_as_int() == (value, ext)


@given(st.uuids(), extensions)
def test_uuid_key_round_trip(value: uuid.UUID, ext: str | None) -> None:
    grain_id = GrainId.create("session", value, ext)
    assert grain_id.key_as_uuid() == (value, ext)
