"""Tokens of a display-filter expression, each with the 1-based column it starts at.

Columns travel with every token so that the parser can point a caret at the exact place an
expression went wrong.
"""

from __future__ import annotations

from typing import NamedTuple


class FilterError(ValueError):
    """A display filter that cannot be compiled; ``column`` is 1-based, ``message`` says what was expected."""

    def __init__(self, column: int, message: str) -> None:
        super().__init__(f"column {column}: {message}")
        self.column = column
        self.message = message


# Token kinds
WORD = "word"  # field names, bare values (numbers, addresses, unquoted strings), keywords
STRING = "string"  # "quoted" value, already unescaped
OP = "op"  # == != < > <= >= ~ && || !
LPAREN, RPAREN, LBRACE, RBRACE, COMMA, EOF = "(", ")", "{", "}", ",", "end"


class Token(NamedTuple):
    kind: str
    text: str  # for STRING: the unescaped value
    col: int  # 1-based column of the first character


OPERATORS = frozenset(("==", "!=", "===", "!==", "<", ">", "<=", ">=", "~", "&&", "||", "!", "&"))
# Valid in Wireshark, not evaluated here: rejected as "unsupported: ..." rather than run.
UNSUPPORTED_CHARS = {
    "*": "arithmetic ('*')",
    "%": "arithmetic ('%')",
    "$": "field references and macros ('$')",
    "#": "layer operator ('#')",
    "@": "raw field values ('@')",
    "|": "bitwise or ('|')",
    "^": "bitwise xor ('^')",
}
_OP_CHARS = frozenset("=!<>~&|^")
# Characters a bare word may hold: field paths, numbers, IPv4/IPv6/MAC addresses, CIDRs, ranges.
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:/-+[]")
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0", "a": "\a"}
_SINGLE = {"(": LPAREN, ")": RPAREN, "{": LBRACE, "}": RBRACE, ",": COMMA}


def _read_string(text: str, start: int) -> tuple[str, int]:
    """Unescape the string literal opening at ``text[start]`` (a double quote); return (value, end index)."""
    out: list[str] = []
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= n:
            break
        esc = text[i + 1]
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
            i += 2
        elif esc == "x":
            digits = text[i + 2 : i + 4]
            if len(digits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise FilterError(i + 1, "expected two hex digits after '\\x'")
            out.append(chr(int(digits, 16)))
            i += 4
        elif esc == "u":
            digits = text[i + 2 : i + 6]
            if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise FilterError(i + 1, "expected four hex digits after '\\u'")
            out.append(chr(int(digits, 16)))
            i += 6
        else:
            # Keep unknown escapes as written, so regular expressions like "\d+" survive.
            out.append("\\" + esc)
            i += 2
    raise FilterError(start + 1, "unterminated string (missing closing '\"')")


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens, ending with an EOF token one column past the end."""
    tokens: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in _SINGLE:
            tokens.append(Token(_SINGLE[ch], ch, i + 1))
            i += 1
        elif ch == '"':
            value, end = _read_string(text, i)
            tokens.append(Token(STRING, value, i + 1))
            i = end
        elif ch in _OP_CHARS:
            j = i
            while j < n and text[j] in _OP_CHARS:
                j += 1
            op = text[i:j]
            if op in ("|", "^"):
                raise FilterError(i + 1, f"unsupported: {UNSUPPORTED_CHARS[op]}")
            if op == "~=":
                raise FilterError(i + 1, "unsupported: operator '~=' (any not equal)")
            if op not in OPERATORS:
                if set(op) == {"!"}:  # "!!tcp": repeated negation
                    tokens.append(Token(OP, "!", i + 1))
                    i += 1
                    continue
                raise FilterError(i + 1, f"unknown operator '{op}'")
            tokens.append(Token(OP, op, i + 1))
            i = j
        elif ch in _WORD_CHARS:
            j = i
            while j < n and text[j] in _WORD_CHARS:
                j += 1
            tokens.append(Token(WORD, text[i:j], i + 1))
            i = j
        elif ch in UNSUPPORTED_CHARS:
            raise FilterError(i + 1, f"unsupported: {UNSUPPORTED_CHARS[ch]}")
        else:
            raise FilterError(i + 1, f"unexpected character {ch!r}")
    tokens.append(Token(EOF, "", n + 1))
    return tokens
