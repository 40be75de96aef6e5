"""Wireshark-style display filters over pktscope's nested packet dicts (see docs/filters.md)."""

from .lexer import FilterError
from .parser import compile_filter, filter_fields

__all__ = ["FilterError", "compile_filter", "filter_fields"]
