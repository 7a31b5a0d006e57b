"""What the chat client prints of other users' text: never a control character, raw.

A message could otherwise move the cursor, clear the screen, ring the bell, set the window
title, or start a new line that looks like another message (`\\n[09:00:00] admin: your account
is locked`), and bidirectional overrides can make text read backwards. Each such character is
shown as a visible escape instead: `\\n`, `\\r`, `\\t`, `\\x1b`, `\\x9b`, `\\u202e`.

Imports the standard library only.
"""

from __future__ import annotations

import re

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# C0 controls, DEL, C1 controls, and the Unicode bidi embeddings, overrides, isolates and marks.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every control character replaced by a visible escape."""
    return _CONTROL.sub(_escape, text)
