"""Grain identity follows Orleans' rules (GrainIdKeyExtensions, GrainTypeResolver)."""

from __future__ import annotations

import sys
import uuid
from typing import Generic, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_grains._exceptions import GrainIdError, GrainKeyKindError
from trio_grains._ids import (
    SINGLETON_KEY,
    GrainId,
    GrainType,
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
    for blank in [None, "", " ", "\t\n"]:
        assert encode_key(42, blank) == "2A"
        assert encode_key(U, blank) == U.hex


def test_extension_with_str_key_is_rejected() -> None:
    with pytest.raises(GrainIdError, match="compound keys"):
        encode_key("bob", "eu")
    assert encode_key("bob", " ") == "bob"


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


@pytest.mark.parametrize("key", ["bob65", "1FFFFFFFFFFFFFFFF", "+eu", "0x2A", "2_A", " 2A", "٣"])
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
    ("key", "char"),
    [("a\x00b", "U+0000"), ("a\nb", "U+000A"), ("\x7f", "U+007F"), ("x\x85", "U+0085")],
)
def test_keys_with_control_characters_are_rejected(key: str, char: str) -> None:
    with pytest.raises(GrainIdError, match="control character") as info:
        GrainId.create("cart", key)
    assert char in str(info.value)
    with pytest.raises(GrainIdError, match="control character"):
        GrainId.create("cart", 42, key)


def test_keys_with_lone_surrogates_and_empty_keys_are_rejected() -> None:
    with pytest.raises(GrainIdError, match="lone surrogate"):
        GrainId.create("cart", "a\ud800")
    with pytest.raises(GrainIdError, match="empty"):
        GrainId.create("cart", "")


def test_unicode_and_punctuation_keys_are_allowed() -> None:
    for key in ["Warenkörb", "日本", "a b", "x/y+z", "\u00a0", "\u200b", "🛒"]:
        grain_id = GrainId.create("cart", key)
        assert grain_id.key == key
        assert GrainId.parse(str(grain_id)) == grain_id


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

key_chars = st.characters(exclude_categories=["Cc", "Cs"])
type_names = st.from_regex(r"[A-Za-z0-9_.@=-]+(`[0-9]+)?", fullmatch=True)
str_keys = st.text(key_chars, min_size=1)
extensions = st.none() | st.text(key_chars)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
grain_ids = st.builds(
    GrainId.create,
    type_names,
    st.one_of(str_keys, int64, st.uuids()),
) | st.builds(GrainId.create, type_names, int64 | st.uuids(), extensions)


def _expected_ext(ext: str | None) -> str | None:
    return None if ext is None or not ext.strip() else ext


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
    assert grain_id.key_as_int() == (value, _expected_ext(ext))


@given(st.uuids(), extensions)
def test_uuid_key_round_trip(value: uuid.UUID, ext: str | None) -> None:
    grain_id = GrainId.create("session", value, ext)
    assert grain_id.key_as_uuid() == (value, _expected_ext(ext))
