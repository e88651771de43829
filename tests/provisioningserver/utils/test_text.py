"""Tests for :mod:`provisioningserver.utils.text`."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from provisioningserver.utils.text import printable


def test_control_characters_are_escaped() -> None:
    assert printable(b"a\nb\x1b[2Jc") == "a\\x0ab\\x1b[2Jc"
    assert printable("tab\there\r\x85") == "tab\\x09here\\x0d\\x85"


def test_undecodable_bytes_show_as_bytes() -> None:
    assert printable(b"\xff\xfe ok") == "\\xff\\xfe ok"


def test_backslashes_are_escaped_so_escapes_cannot_be_forged() -> None:
    assert printable(b"\\x0a") == "\\\\x0a"


def test_separators_and_bidi_overrides_are_escaped() -> None:
    assert printable("a\u2028b\u202ec") == "a\\u2028b\\u202ec"


def test_long_values_are_cut_with_their_length() -> None:
    assert printable(b"x" * 500_000, limit=10) == "xxxxxxxxxx... (500000 bytes)"
    assert printable("é" * 20, limit=3) == "ééé... (20 characters)"


def test_non_text_values_use_str() -> None:
    assert printable(12345) == "12345"


@given(st.one_of(st.binary(max_size=2000), st.text(max_size=2000)), st.integers(1, 300))
def test_output_is_one_bounded_line(value: bytes | str, limit: int) -> None:
    text = printable(value, limit)
    # Each shown character becomes at most 6 (\uNNNN), plus the length note.
    assert len(text) <= limit * 6 + 40
    for char in text:
        category = unicodedata.category(char)
        assert category not in ("Cc", "Zl", "Zp"), (value, text)
        assert char not in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
