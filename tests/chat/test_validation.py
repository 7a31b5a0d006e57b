"""Checks made before proposing: bad input never reaches the log."""

from __future__ import annotations

import pytest

from node.chat.commands import MAX_INT64, MAX_UINT64, RequestId
from node.chat.errors import ChatError, ErrorCode
from node.chat.validation import (
    MAX_HISTORY_LIMIT,
    MAX_PASSWORD_CHARS,
    MAX_PATTERN_CHARS,
    TOKEN_BYTES,
    show,
    validate_history_limit,
    validate_message_id,
    validate_new_token,
    validate_page_size,
    validate_password,
    validate_pattern,
    validate_request_id,
    validate_text,
    validate_token,
    validate_username,
)
from node.config import ChatLimits
from protos import vocabulary

LIMITS = ChatLimits()


def invalid(fn: object, *args: object) -> ChatError:
    with pytest.raises(ChatError) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    return info.value


@pytest.mark.parametrize("name", ["a", "Z", "7", "_", ".", "-", "x" * 32, "Al.ice_B-2"])
def test_usernames_of_1_to_32_allowed_characters_pass(name: str) -> None:
    assert validate_username(name, LIMITS) == name


def test_username_of_33_characters_is_refused_with_its_length() -> None:
    err = invalid(validate_username, "x" * 33, LIMITS)
    assert "33 characters" in err.message and "32" in err.message


def test_empty_username_is_refused() -> None:
    assert "empty" in invalid(validate_username, "", LIMITS).message


def test_bad_username_message_names_the_rule() -> None:
    err = invalid(validate_username, "bob!", LIMITS)
    assert err.message.startswith(
        "username 'bob!' may only contain letters, digits, '_', '.' and '-'"
    )
    assert "'!'" in err.message


@pytest.mark.parametrize(
    "name",
    [
        "jürgen",
        "ñ",
        "Ωmega",
        "\uff46\uff55\uff4c\uff4c",  # fullwidth "full"
        "١٢٣",  # Arabic-Indic digits
        "a b",
        "a\nb",
        "bob\n",
        "tab\t",
        "a/b",
        "a@b",
    ],
)
def test_unicode_letters_digits_and_other_characters_are_refused(name: str) -> None:
    invalid(validate_username, name, LIMITS)


def test_username_limit_follows_the_configured_limits() -> None:
    short = ChatLimits(max_username_chars=4)
    assert validate_username("abcd", short) == "abcd"
    invalid(validate_username, "abcde", short)


def test_long_values_are_shortened_in_messages() -> None:
    err = invalid(validate_username, "y" * 500, LIMITS)
    assert "y" * 41 not in err.message and "…" in err.message
    assert show("it's") == '"it\'s"'
    assert show("a\x00b") == "'a\\x00b'"


def test_password_must_be_non_empty_and_at_most_1024_characters() -> None:
    assert validate_password("p") == "p"
    assert validate_password("é" * MAX_PASSWORD_CHARS) == "é" * MAX_PASSWORD_CHARS
    invalid(validate_password, "")
    assert "1025" in invalid(validate_password, "p" * (MAX_PASSWORD_CHARS + 1)).message
    invalid(validate_password, "ab\ud800")


def test_text_of_1_to_4096_characters_passes() -> None:
    assert validate_text("x", LIMITS) == "x"
    assert len(validate_text("x" * 4096, LIMITS)) == 4096
    # characters, not bytes: 4,096 four-byte characters are still 4,096 characters
    assert len(validate_text("😀" * 4096, LIMITS)) == 4096


def test_empty_and_4097_character_texts_are_refused() -> None:
    assert "empty" in invalid(validate_text, "", LIMITS).message
    err = invalid(validate_text, "x" * 4097, LIMITS)
    assert "4097" in err.message and "4096" in err.message


def test_text_that_is_not_valid_unicode_is_refused() -> None:
    assert "surrogate" in invalid(validate_text, "half \udc80 a pair", LIMITS).message


def test_empty_pattern_means_everything_and_overlong_patterns_are_refused() -> None:
    assert validate_pattern("") == "*"
    assert validate_pattern("[ab]*") == "[ab]*"
    assert validate_pattern("?" * MAX_PATTERN_CHARS) == "?" * MAX_PATTERN_CHARS
    invalid(validate_pattern, "*" * (MAX_PATTERN_CHARS + 1))


def test_page_size_zero_means_default_and_large_ones_are_cut() -> None:
    assert validate_page_size(0, LIMITS) == LIMITS.page_size
    assert validate_page_size(7, LIMITS) == 7
    assert validate_page_size(10**9, LIMITS) == LIMITS.max_page_size
    invalid(validate_page_size, -1, LIMITS)


def test_history_limit_zero_means_default_and_is_cut_to_what_is_kept() -> None:
    limits = ChatLimits(history_per_pair=50, page_size=100)
    assert validate_history_limit(0, limits) == 50
    assert validate_history_limit(10, limits) == 10
    assert validate_history_limit(10**6, limits) == 50
    invalid(validate_history_limit, -5, limits)


def test_history_limit_is_cut_to_one_replys_worth_when_much_more_is_kept() -> None:
    limits = ChatLimits(history_per_pair=1_000_000)
    assert validate_history_limit(9_999, limits) == 9_999
    assert validate_history_limit(10**6, limits) == MAX_HISTORY_LIMIT == 10_000


def test_message_ids_fit_sqlites_signed_64_bits() -> None:
    """TRAPS.md: SQLite INTEGER is signed 64-bit, so every id (after_id, up_to_id) is checked
    against 2**63 - 1 before it is proposed."""
    assert validate_message_id(0) == 0
    assert validate_message_id(MAX_INT64) == MAX_INT64
    invalid(validate_message_id, -1)
    invalid(validate_message_id, MAX_INT64 + 1)
    assert "after_id" in invalid(validate_message_id, MAX_UINT64, "after_id").message


MALFORMED_TOKENS = ["", "has space", "x" * 129, "tök", "ab" * 31, "AB" * 32, "ab" * 33]


@pytest.mark.parametrize("token", MALFORMED_TOKENS)
def test_missing_or_malformed_tokens_are_unauthenticated(token: str) -> None:
    with pytest.raises(ChatError) as info:
        validate_token(token)
    assert info.value.code is ErrorCode.UNAUTHENTICATED
    assert "log in" in info.value.message


@pytest.mark.parametrize("token", MALFORMED_TOKENS)
def test_a_login_must_bring_a_well_formed_new_token(token: str) -> None:
    """Issue 11: the session secret is chosen by the client, 32 random bytes."""
    err = invalid(validate_new_token, token)
    assert "32 random bytes as 64 lowercase hex digits" in err.message


def test_the_clients_tokens_have_the_shape_the_node_checks() -> None:
    """protos.vocabulary draws the tokens; node/chat may not import it, so the two sizes are
    tied here."""
    assert TOKEN_BYTES == vocabulary.TOKEN_BYTES
    tokens = {vocabulary.new_session_token() for _ in range(64)}
    assert len(tokens) == 64
    for token in tokens:
        assert validate_token(token) == token == validate_new_token(token)


def test_request_ids() -> None:
    """A client id is one the log handed out (a positive log index, thesis §6.3); every
    number fits SQLite's signed 64 bits (TRAPS.md)."""
    assert validate_request_id(7, 5, 3) == RequestId(7, 5, 3)
    assert validate_request_id(7, 0, 0) == RequestId(7, 0, 0)
    assert validate_request_id(MAX_INT64, MAX_INT64, MAX_INT64) == RequestId(
        MAX_INT64, MAX_INT64, MAX_INT64
    )
    assert "RegisterClient" in invalid(validate_request_id, 0, 1, 1).message  # the proto default
    invalid(validate_request_id, -1, 1, 1)
    invalid(validate_request_id, MAX_INT64 + 1, 1, 1)
    invalid(validate_request_id, 7, 3, 4)  # nothing outstanding beyond the request itself
    invalid(validate_request_id, 7, -1, 0)
    invalid(validate_request_id, 7, MAX_INT64 + 1, 0)
    invalid(validate_request_id, 7, MAX_UINT64, 0)
