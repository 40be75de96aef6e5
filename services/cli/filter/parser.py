"""Recursive-descent parser that compiles a display filter straight into nested closures.

Grammar (lowest precedence first)::

    expr       := and_expr { ("or" | "||") and_expr }
    and_expr   := not_expr { ("and" | "&&") not_expr }
    not_expr   := ("not" | "!") not_expr | primary
    primary    := "(" expr ")" | test
    test       := FIELD
                | FIELD relop VALUE
                | FIELD ("contains") VALUE
                | FIELD ("matches" | "~") STRING
                | FIELD "in" "{" element { [","] element } "}"
    relop      := "==" | "!=" | "<" | ">" | "<=" | ">=" | "eq" | "ne" | "lt" | "gt" | "le" | "ge"
    element    := VALUE | VALUE ".." VALUE
    VALUE      := STRING | WORD (number, 0x hex, address, CIDR, MAC, bare text)

Closures are built once; evaluating a packet is a few calls deep with no parsing.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from . import values as V
from .fields import getter
from .lexer import COMMA, EOF, LBRACE, LPAREN, OP, RBRACE, RPAREN, STRING, WORD, FilterError, Token, tokenize

Predicate = Callable[[dict], bool]

_WORD_OPS = {"eq": "==", "ne": "!=", "lt": "<", "gt": ">", "le": "<=", "ge": ">="}
_RELOPS = frozenset(("==", "!=", "<", ">", "<=", ">="))
_KEYWORDS = frozenset(("and", "or", "not", "in", "contains", "matches", *_WORD_OPS))
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\[\])?(\.[A-Za-z0-9_-]+(\[\])?)*$")
MAX_DEPTH = 64


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0
        self.depth = 0

    # -- token helpers -------------------------------------------------------------------------
    def peek(self) -> Token:
        return self.tokens[self.pos]

    def next(self) -> Token:
        tok = self.tokens[self.pos]
        if tok.kind != EOF:
            self.pos += 1
        return tok

    def at_keyword(self, *words: str) -> bool:
        tok = self.peek()
        return (tok.kind == WORD and tok.text in words) or (tok.kind == OP and tok.text in words)

    # -- grammar -------------------------------------------------------------------------------
    def parse(self) -> Predicate:
        pred = self.expr()
        tok = self.peek()
        if tok.kind == RPAREN:
            raise FilterError(tok.col, "unexpected ')' without a matching '('")
        if tok.kind != EOF:
            raise FilterError(tok.col, f"expected 'and', 'or' or the end of the filter, got {_show(tok)}")
        return pred

    def expr(self) -> Predicate:
        parts = [self.and_expr()]
        while self.at_keyword("or", "||"):
            op = self.next()
            if self.peek().kind == EOF:
                raise FilterError(self.peek().col, f"expected a test after '{op.text}'")
            parts.append(self.and_expr())
        return _chain_or(parts)

    def and_expr(self) -> Predicate:
        parts = [self.not_expr()]
        while self.at_keyword("and", "&&"):
            op = self.next()
            if self.peek().kind == EOF:
                raise FilterError(self.peek().col, f"expected a test after '{op.text}'")
            parts.append(self.not_expr())
        return _chain_and(parts)

    def not_expr(self) -> Predicate:
        negations = 0
        while self.at_keyword("not", "!"):
            op = self.next()
            negations += 1
            if self.peek().kind == EOF:
                raise FilterError(self.peek().col, f"expected a test after '{op.text}'")
        inner = self.primary()
        if negations % 2:
            return lambda p: not inner(p)
        return inner

    def primary(self) -> Predicate:
        tok = self.next()
        if tok.kind == LPAREN:
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise FilterError(tok.col, f"parentheses nested more than {MAX_DEPTH} deep")
            if self.peek().kind == RPAREN:
                raise FilterError(self.peek().col, "expected a test inside '()'")
            inner = self.expr()
            close = self.peek()
            if close.kind != RPAREN:
                if close.kind == EOF:
                    raise FilterError(close.col, f"expected ')' to close the '(' at column {tok.col}")
                raise FilterError(close.col, f"expected ')' or 'and'/'or', got {_show(close)}")
            self.next()
            self.depth -= 1
            return inner
        if tok.kind == EOF:
            raise FilterError(tok.col, "expected a field or protocol name")
        if tok.kind != WORD or tok.text in _KEYWORDS:
            raise FilterError(tok.col, f"expected a field or protocol name, got {_show(tok)}")
        if "[" in tok.text.replace("[]", ""):
            at = tok.col + tok.text.index("[")
            raise FilterError(at, "field slices like [0:3] are not supported")
        if not _FIELD_RE.match(tok.text):
            raise FilterError(
                tok.col, f"'{tok.text}' is not a field name (values go on the right of an operator)"
            )
        return self.test(tok)

    def test(self, field: Token) -> Predicate:
        get = getter(field.text)
        tok = self.peek()
        if tok.kind == EOF or tok.kind == RPAREN or self.at_keyword("and", "or", "&&", "||"):
            return lambda p: bool(get(p))
        self.next()
        op = _WORD_OPS.get(tok.text, tok.text) if tok.kind in (WORD, OP) else None
        if op in _RELOPS:
            lit = self.value(tok)
            return _relation(get, op, lit)
        if op == "contains":
            lit = self.value(tok)
            return lambda p: any(V.contains(v, lit) for v in get(p))
        if op in ("matches", "~"):
            return self.matches(get, tok)
        if op == "in":
            return self.member(get, tok)
        if tok.kind == OP and tok.text == "!":
            raise FilterError(tok.col, "unknown operator '!' after a field (did you mean '!='?)")
        raise FilterError(
            tok.col,
            f"unknown operator {_show(tok)}: expected ==, !=, <, >, <=, >=, contains, matches, ~ or in",
        )

    def value(self, op: Token) -> V.Literal:
        tok = self.peek()
        if tok.kind == STRING:
            self.next()
            return V.Literal(tok.text, tok.col, quoted=True)
        if tok.kind == WORD and tok.text not in ("and", "or", "not"):
            self.next()
            return V.Literal(tok.text, tok.col, quoted=False)
        raise FilterError(tok.col, f"expected a value after '{op.text}'")

    def matches(self, get: Callable[[dict], list], op: Token) -> Predicate:
        tok = self.peek()
        if tok.kind not in (STRING, WORD) or tok.text in ("and", "or", "not") and tok.kind == WORD:
            raise FilterError(tok.col, f"expected a quoted regular expression after '{op.text}'")
        self.next()
        try:
            rx = re.compile(tok.text, re.IGNORECASE)
        except re.error as exc:
            raise FilterError(tok.col, f"bad regular expression: {exc}") from None
        search = rx.search

        def pred(p: dict) -> bool:
            for v in get(p):
                s = V.as_text(v)
                if s is not None and search(s):
                    return True
            return False

        return pred

    def member(self, get: Callable[[dict], list], op: Token) -> Predicate:
        brace = self.next()
        if brace.kind != LBRACE:
            raise FilterError(brace.col, f"expected '{{' after '{op.text}'")
        singles: list[V.Literal] = []
        ranges: list[tuple[V.Literal, V.Literal]] = []
        while True:
            tok = self.peek()
            if tok.kind == RBRACE:
                self.next()
                break
            if tok.kind == COMMA:
                self.next()
                continue
            if tok.kind == EOF:
                raise FilterError(tok.col, f"expected '}}' to close the set opened at column {brace.col}")
            if tok.kind == STRING:
                self.next()
                singles.append(V.Literal(tok.text, tok.col, quoted=True))
                continue
            if tok.kind != WORD:
                raise FilterError(tok.col, f"expected a value or '}}' in the set, got {_show(tok)}")
            self.next()
            if ".." in tok.text:
                lo, _, hi = tok.text.partition("..")
                if not lo or not hi:
                    raise FilterError(tok.col, f"expected a range like 1..1024, got '{tok.text}'")
                lo_lit = V.Literal(lo, tok.col, quoted=False)
                hi_lit = V.Literal(hi, tok.col + len(lo) + 2, quoted=False)
                _no_cidr(lo_lit, "a range")
                _no_cidr(hi_lit, "a range")
                ranges.append((lo_lit, hi_lit))
            else:
                singles.append(V.Literal(tok.text, tok.col, quoted=False))
        if not singles and not ranges:
            raise FilterError(brace.col, "expected at least one value in the set")
        items = tuple(singles)
        spans = tuple(ranges)
        cmp = V.compare

        def pred(p: dict) -> bool:
            for v in get(p):
                for lit in items:
                    if cmp(v, lit, "=="):
                        return True
                for lo, hi in spans:
                    if cmp(v, lo, ">=") and cmp(v, hi, "<="):
                        return True
            return False

        return pred


def _chain_or(parts: list[Predicate]) -> Predicate:
    """Nested two-way closures (fast) for a few terms; a flat loop for long chains (no deep calls)."""
    if len(parts) > 8:
        items = tuple(parts)
        return lambda p: any(f(p) for f in items)
    pred = parts[0]
    for nxt in parts[1:]:
        pred = (lambda a, b: lambda p: a(p) or b(p))(pred, nxt)
    return pred


def _chain_and(parts: list[Predicate]) -> Predicate:
    """Nested two-way closures (fast) for a few terms; a flat loop for long chains (no deep calls)."""
    if len(parts) > 8:
        items = tuple(parts)
        return lambda p: all(f(p) for f in items)
    pred = parts[0]
    for nxt in parts[1:]:
        pred = (lambda a, b: lambda p: a(p) and b(p))(pred, nxt)
    return pred


def _no_cidr(lit: V.Literal, what: str) -> None:
    if lit.net is not None and "/" in lit.text:
        raise FilterError(lit.col, f"a CIDR network cannot be used in {what}")


def _relation(get: Callable[[dict], list], op: str, lit: V.Literal) -> Predicate:
    cmp = V.compare
    if op == "!=":
        # Wireshark >= 3.6 semantics: "a != b" is "not (a == b)" for a present field:
        # true only when no value of the field equals b; false when the field is absent.
        def ne(p: dict) -> bool:
            vals = get(p)
            if not vals:
                return False
            return not any(cmp(v, lit, "==") for v in vals)

        return ne
    if op != "==":
        _no_cidr(lit, f"'{op}' (use == or in)")

    def rel(p: dict) -> bool:
        return any(cmp(v, lit, op) for v in get(p))

    return rel


def _show(tok: Token) -> str:
    if tok.kind == EOF:
        return "the end of the filter"
    if tok.kind == STRING:
        return f'"{tok.text}"'
    return f"'{tok.text}'"


def compile_filter(text: str) -> Predicate:
    """Compile ``text`` into ``predicate(packet_dict) -> bool``; raises FilterError with a column."""
    if not text.strip():
        return lambda p: True
    return _Parser(text).parse()
