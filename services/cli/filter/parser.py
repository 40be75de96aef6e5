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

from . import operands as O
from . import values as V
from .fields import getter
from .lexer import COMMA, EOF, LBRACE, LPAREN, OP, RBRACE, RPAREN, STRING, WORD, FilterError, Token, tokenize
from .registry import PROTOCOL_ONLY, check_field, is_field_name

Predicate = Callable[[dict], bool]

_WORD_OPS = {"eq": "==", "ne": "!=", "lt": "<", "gt": ">", "le": "<=", "ge": ">="}
_RELOPS = frozenset(("==", "!=", "<", ">", "<=", ">="))
_KEYWORDS = frozenset(("and", "or", "not", "in", "contains", "matches", *_WORD_OPS))
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\[\])?(\.[A-Za-z0-9_-]+(\[\])?)*$")
_SLICED_RE = re.compile(r"^(.*?)\[([-0-9:,]+)\]$")
_FUNCTIONS = frozenset(("len", "count", "upper", "lower", "string", "max", "min", "abs", "vals"))
_ARITHMETIC = frozenset(("+", "-", "/", "*"))
MAX_DEPTH = 64


class _Parser:
    def __init__(self, text: str, strict: bool = True) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0
        self.depth = 0
        self.strict = strict
        self.kinds: dict[int, str] = {}  # id(getter) -> field name, "bytes" (a slice) or "len"
        self.names: set[str] = set()  # every field and protocol name the filter reads

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
        if tok.kind == WORD and tok.text in _FUNCTIONS and self.peek().kind == LPAREN:
            left = self.function(tok)
            return self.test(left, tok)
        if tok.kind != WORD or tok.text in _KEYWORDS:
            raise FilterError(tok.col, f"expected a field or protocol name, got {_show(tok)}")
        left = self.field_operand(tok, strict_field=True)
        return self.test(left, tok)

    # -- operands ------------------------------------------------------------------------------
    def field_operand(self, tok: Token, strict_field: bool) -> Callable[[dict], list]:
        """A field, optionally sliced (``eth.src[0:3]``), as a getter of its values."""
        text = tok.text
        name, spec = text, None
        m = _SLICED_RE.match(text)
        if m:
            name, spec = m.group(1), m.group(2)
        if not _FIELD_RE.match(name):
            if "[" in name.replace("[]", ""):
                raise FilterError(tok.col + name.index("["), f"bad slice in '{text}'")
            raise FilterError(tok.col, f"'{text}' is not a field name (values go on the right of an operator)")
        if strict_field:
            check_field(name, tok.col, self.strict)
        self.names.add(name)
        get = getter(name)
        if spec is not None:
            if name in PROTOCOL_ONLY:
                raise FilterError(tok.col, f"unsupported: slices of the '{name}' layer (only 'frame[...]')")
            get = O.sliced(get, O.parse_slice(spec, tok.col + len(name)))
            self.kinds[id(get)] = "bytes"
        else:
            self.kinds[id(get)] = name
        return get

    def function(self, tok: Token) -> Callable[[dict], list]:
        """``len(field)``; other Wireshark functions are rejected as unsupported."""
        if tok.text != "len":
            raise FilterError(tok.col, f"unsupported: function '{tok.text}()'")
        self.next()  # (
        arg = self.next()
        if arg.kind != WORD or not _FIELD_RE.match(_SLICED_RE.sub(r"\1", arg.text)):
            raise FilterError(arg.col, "expected a field inside len()")
        inner = self.field_operand(arg, strict_field=True)
        close = self.next()
        if close.kind != RPAREN:
            raise FilterError(close.col, "expected ')' to close len(")
        get = O.length_of(inner)
        self.kinds[id(get)] = "len"
        return get

    def masked(self, get: Callable[[dict], list]) -> Callable[[dict], list]:
        """``field & mask`` when an '&' follows; else the getter unchanged."""
        tok = self.peek()
        if not (tok.kind == OP and tok.text == "&"):
            return get
        self.next()
        m = self.peek()
        if m.kind not in (WORD, STRING):
            raise FilterError(m.col, "expected a mask value after '&'")
        self.next()
        lit = V.Literal(m.text, m.col, quoted=m.kind == STRING)
        mask_int = lit.num if isinstance(lit.num, int) else None
        if mask_int is None and lit.raw is None:
            raise FilterError(m.col, f"'{m.text}' is not a mask")
        return O.masked(get, mask_int, lit.raw)

    def right_field(self) -> Callable[[dict], list] | None:
        """The right side when it names a field (or len(field)), for field-to-field tests."""
        tok = self.peek()
        if tok.kind != WORD:
            return None
        if tok.text in _FUNCTIONS and self.tokens[self.pos + 1].kind == LPAREN:
            self.next()
            return self.function(tok)
        name = _SLICED_RE.sub(r"\1", tok.text)
        if not is_field_name(name) or V.Literal(tok.text, tok.col, quoted=True).num is not None:
            return None
        self.next()
        return self.field_operand(tok, strict_field=True)

    def test(self, get: Callable[[dict], list], field: Token) -> Predicate:
        plain = get
        get = self.masked(get)
        tok = self.peek()
        if tok.kind == EOF or tok.kind == RPAREN or self.at_keyword("and", "or", "&&", "||"):
            if get is not plain:
                return O.nonzero(get)  # field & mask alone: true when non-zero
            return lambda p: bool(get(p))
        self.next()
        if tok.kind == WORD and tok.text in _ARITHMETIC:
            raise FilterError(tok.col, f"unsupported: arithmetic ('{tok.text}')")
        if tok.kind == WORD and tok.text in ("all_eq", "any_eq", "all_ne", "any_ne"):
            tok = Token(OP, {"all_eq": "===", "any_eq": "==", "all_ne": "!=", "any_ne": "!=="}[tok.text], tok.col)
        op = _WORD_OPS.get(tok.text, tok.text) if tok.kind in (WORD, OP) else None
        known = op in _RELOPS or op in ("===", "!==", "contains", "matches", "~", "in")
        if known and self.kinds.get(id(plain)) in PROTOCOL_ONLY:
            raise FilterError(
                field.col, f"unsupported: '{field.text} {tok.text}': only 'frame' can be tested by its bytes"
            )
        if op in _RELOPS or op in ("===", "!=="):
            other = self.right_field()
            if other is not None:
                nxt = self.peek()
                if nxt.kind == WORD and nxt.text[:1] in _ARITHMETIC:
                    raise FilterError(nxt.col, f"unsupported: arithmetic ('{nxt.text[:1]}')")
                return _field_relation(get, op, self.masked(other))
            lit = self.value(tok)
            nxt = self.peek()
            if nxt.kind == WORD and nxt.text[:1] in _ARITHMETIC:
                raise FilterError(nxt.col, f"unsupported: arithmetic ('{nxt.text}')")
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
            f"unknown operator {_show(tok)}: expected ==, !=, ===, !==, <, >, <=, >=, &, contains, matches, ~ or in",
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


def _field_relation(get: Callable[[dict], list], op: str, other: Callable[[dict], list]) -> Predicate:
    """Field-to-field: == any pair equal; != no pair equal; === every left value equals some right
    value; !== some left value equals no right value; < etc. any pair."""
    cmpv = V.compare_values
    if op in ("!=", "===", "!=="):

        def pred(p: dict) -> bool:
            left, right = get(p), other(p)
            if not left or not right:
                return False
            if op == "!=":
                return not any(cmpv(a, b, "==") for a in left for b in right)
            hits = [any(cmpv(a, b, "==") for b in right) for a in left]
            return all(hits) if op == "===" else not all(hits)

        return pred

    def rel(p: dict) -> bool:
        right = other(p)
        return bool(right) and any(cmpv(a, b, op) for a in get(p) for b in right)

    return rel


def _relation(get: Callable[[dict], list], op: str, lit: V.Literal) -> Predicate:
    cmp = V.compare
    if op == "===":

        def all_eq(p: dict) -> bool:
            vals = get(p)
            return bool(vals) and all(cmp(v, lit, "==") for v in vals)

        return all_eq
    if op == "!==":

        def any_ne(p: dict) -> bool:
            return any(not cmp(v, lit, "==") for v in get(p))

        return any_ne
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


def compile_filter(text: str, strict: bool = True) -> Predicate:
    """Compile ``text`` into ``predicate(packet_dict) -> bool``; raises FilterError with a column.

    ``strict``: a field pktscope does not decode is an error ("unsupported: ..."); tests of
    the engine itself on made-up packets pass False.
    """
    if not text.strip():
        return lambda p: True
    return _Parser(text, strict).parse()


def filter_fields(text: str) -> frozenset[str]:
    """The field and protocol names a valid filter reads (``read`` skips work no one reads)."""
    if not text.strip():
        return frozenset()
    parser = _Parser(text, strict=False)
    parser.parse()
    return frozenset(parser.names)


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ('compile_filter', 'filter_fields'))
