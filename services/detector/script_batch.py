"""A frame's script calls as one call of one dispatcher script (plain, non-Cluster Redis).

The detector's decisions are Lua scripts (services/detector/lua.py, connections.PAIR), one
EVALSHA per decision: ~14,500 on the 5x bench capture. Each EVALSHA costs redis-server a script
lookup, two fresh KEYS/ARGV tables and a reply conversion, and the client a command to pack and
a reply to read. The dispatcher takes every script call of a frame, in order, as one EVALSHA and
calls each script's body as a Lua function of its own KEYS and ARGV. What each call does and
answers is unchanged; an error in one call is caught (``pcall``) and answered as that call's
error reply, as a separate EVALSHA's would be, and the calls after it still run.

Only for a plain Redis: on a Cluster the calls' keys live in different slots, and each script
call goes on its own (services/detector/engine.py).

Layout of the call: ``EVALSHA sha numkeys KEYS... ARGV...`` with ARGV = ``n``, then per call
``name nkeys nargs``, then every call's arguments in order; KEYS are every call's keys in order.
The reply is an array of the calls' replies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from services.detector import lua

_DISPATCH = r"""
local n = tonumber(ARGV[1])
local ki, ai = 1, 2 + 3 * n
local out = {}
for c = 1, n do
  local h = 2 + (c - 1) * 3
  local f = SCRIPTS[ARGV[h]]
  local nk, na = tonumber(ARGV[h + 1]), tonumber(ARGV[h + 2])
  local keys, args = {}, {}
  for j = 1, nk do keys[j] = KEYS[ki + j - 1] end
  for j = 1, na do args[j] = ARGV[ai + j - 1] end
  ki, ai = ki + nk, ai + na
  if f == nil then
    out[c] = {err = 'ERR pktscope dispatcher: no script ' .. tostring(ARGV[h])}
  else
    local ok, res = pcall(f, keys, args)
    if ok then
      out[c] = res
    elseif type(res) == 'table' and res.err then
      out[c] = {err = res.err}
    else
      out[c] = {err = tostring(res)}
    end
  end
end
return out
"""


def dispatcher_source(scripts: Mapping[str, str]) -> str:
    """The dispatcher over ``scripts`` (name -> script text): each text's body as a function."""
    parts = [lua.COMMON, "local SCRIPTS = {}"]
    for name, text in scripts.items():
        body = text[len(lua.COMMON) :] if text.startswith(lua.COMMON) else text
        parts.append(f"SCRIPTS[{_lua_string(name)}] = function(KEYS, ARGV)\n{body}\nend")
    parts.append(_DISPATCH)
    return "\n".join(parts)


def _lua_string(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"script name {name!r} is not a plain identifier")
    return f"'{name}'"


def dispatch_command(sha: str, calls: Sequence[tuple[str, Sequence[Any], Sequence[Any]]]) -> tuple:
    """The EVALSHA command (as for ``Connection.pack_commands``) of ``calls``: (name, keys, args)."""
    header: list[Any] = [len(calls)]
    keys: list[Any] = []
    args: list[Any] = []
    for name, call_keys, call_args in calls:
        header += (name, len(call_keys), len(call_args))
        keys += call_keys
        args += call_args
    return ("EVALSHA", sha, len(keys), *keys, *header, *args)
