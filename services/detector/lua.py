"""Lua scripts: each decision ("is this new, not learning, not in cooldown?") and its effects
(baseline update, cooldown stamp, alert append) happen in one atomic server-side step, so two
detectors sharing a Redis never raise the same alert twice.

Every script touches keys of one entity only (hash tag ``{entity}``), plus optionally the
alert stream as the last key. When the alert stream is left out (Redis Cluster, where it lives
in another slot) the script returns the alert and the caller appends it: the winner of the
decision is still unique, only the append is no longer in the same atomic step.

Alerts are prepared by the client as JSON; values only the server knows (the old identity,
volume statistics) replace whole JSON string tokens ``"\\u0001"``, ``"\\u0002"``... (quotes included).
Data cannot forge such a token: inside JSON a data quote is always ``\\"``, and
``alerts.clean_text`` has already escaped every control character in strings from outside.

Return value of every script: ``{status, stream_id, alert_json}`` with status
0 known / nothing new, 1 new but learning (recorded silently), 2 new but in cooldown, 3 alerted,
4 (VOLUME) bytes behind the entity's open interval, not added; CHECK_NOVEL may return several
``stream_id, alert_json`` pairs after the status, one per new fact.
"""

from __future__ import annotations

KNOWN, LEARNED, COOLDOWN, ALERTED, BEHIND = 0, 1, 2, 3, 4

# Helpers every decision script starts with (services/detector/script_batch.py defines them once
# for all the scripts it calls).
COMMON = r"""
local function replace_plain(s, old, new)
  local i, j = string.find(s, old, 1, true)
  if not i then return s end
  return string.sub(s, 1, i - 1) .. new .. string.sub(s, j + 1)
end

-- The cooldown is a sorted set: de-duplication key scored by the packet time of its last alert,
-- so every operation is O(log n). (Before, a hash scanned whole once past its cap: 13k -> 2k
-- alerts a minute under a flood of new destinations.) A hash left by an older version is
-- turned into the sorted set once.
local function cooldown_zset(cd_key)
  if redis.call('TYPE', cd_key).ok == 'hash' then
    local flat = redis.call('HGETALL', cd_key)
    redis.call('DEL', cd_key)
    for i = 1, #flat, 2 do redis.call('ZADD', cd_key, tonumber(flat[i + 1]) or 0, flat[i]) end
  end
  return cd_key
end

local function in_cooldown(cd_key, dedup, ts, cooldown)
  local last = tonumber(redis.call('ZSCORE', cooldown_zset(cd_key), dedup))
  return last ~= nil and math.abs(ts - last) < cooldown
end

-- Stamp; past `cap` entries drop those whose cooldown is over (oldest first, O(log n) each),
-- then, if still over (a flood: every entry in cooldown), the oldest ones. Returns how many
-- entries the cap pushed out while still in cooldown (counted by the detector: `caps_hit`).
local function stamp_cooldown(cd_key, dedup, ts, cooldown, cap)
  redis.call('ZADD', cd_key, string.format('%.6f', ts), dedup)
  local size = redis.call('ZCARD', cd_key)
  if size <= cap then return 0 end
  size = size - redis.call('ZREMRANGEBYSCORE', cd_key, '-inf', '(' .. string.format('%.6f', ts - cooldown))
  if size <= cap then return 0 end
  redis.call('ZPOPMIN', cd_key, size - cap)
  return size - cap
end

local function append(stream_key, maxlen, kind, alert)
  if not stream_key then return '' end
  return redis.call('XADD', stream_key, 'MAXLEN', '~', maxlen, '*', 'kind', kind, 'alert', alert)
end
"""

CHECK_NOVEL = (
    COMMON
    + r"""
-- KEYS[1] cooldown sorted set, KEYS[2..n+1] targets, KEYS[n+2] alert stream (optional)
-- ARGV: learning(0|1) ts cooldown cap maxlen kind n, then n x (mode member value dedup alert_json)
-- mode 's': target is a set, member is new when SADD adds it (at `cap` members one random
--           member is evicted first);  mode 'h': target is a hash, new when HSETNX sets field
-- Every target that is new and out of cooldown raises its own alert (one flow to a new country
-- in a new AS raises two, as each is a separate fact with its own de-duplication key and
-- cooldown). Returns {status, id1, alert1, id2, alert2, ...} and, when a cap bit, the number of
-- set members and cooldown entries it pushed out as one more (last) element.
local learning = ARGV[1] == '1'
local ts = tonumber(ARGV[2])
local cooldown = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local n = tonumber(ARGV[7])
local stream_key = KEYS[n + 2]
local status = 0
local raised = {}
local capped = 0
for i = 1, n do
  local key = KEYS[1 + i]
  local b = 7 + (i - 1) * 5
  local mode, member, value, dedup = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local added = 0
  if mode == 'h' then
    added = redis.call('HSETNX', key, member, value)
  elseif redis.call('SISMEMBER', key, member) == 0 then
    if redis.call('SCARD', key) >= cap then  -- O(1): one random member makes room
      redis.call('SPOP', key)
      capped = capped + 1
    end
    added = redis.call('SADD', key, member)
  end
  if added == 1 then
    if status < 1 then status = 1 end
    if not learning then
      if in_cooldown(KEYS[1], dedup, ts, cooldown) then
        if status < 2 then status = 2 end
      else
        capped = capped + stamp_cooldown(KEYS[1], dedup, ts, cooldown, cap)
        status = 3
        local alert = ARGV[b + 5]
        raised[#raised + 1] = append(stream_key, ARGV[5], ARGV[6], alert)
        raised[#raised + 1] = alert
      end
    end
  end
end
if #raised == 0 then raised = {'', ''} end
table.insert(raised, 1, status)
-- a trailing count (the reply's length turns even) when a cap pushed something out
if capped > 0 then raised[#raised + 1] = capped end
return raised
"""
)

CHECK_IDENTITY = (
    COMMON
    + r"""
-- KEYS[1] entity hash, KEYS[2] cooldown hash, KEYS[3] alert stream (optional)
-- ARGV: learning ts cooldown cap maxlen kind identity dedup alert_json
-- The first identity seen is the baseline; during learning a new one replaces it (updates).
-- Placeholders: "\u0001" -> old identity, "\u0002" -> title (ARGV[10] .. old[1..12] .. ARGV[11]).
local learning = ARGV[1] == '1'
local ts = tonumber(ARGV[2])
local new = ARGV[7]
local base = redis.call('HGET', KEYS[1], 'identity')
redis.call('HSET', KEYS[1], 'identity_seen', new)
if not base or (learning and base ~= new) then
  redis.call('HSET', KEYS[1], 'identity', new)
  return {1, '', ''}
end
if base == new then return {0, '', ''} end
if in_cooldown(KEYS[2], ARGV[8], ts, tonumber(ARGV[3])) then return {2, '', ''} end
stamp_cooldown(KEYS[2], ARGV[8], ts, tonumber(ARGV[3]), tonumber(ARGV[4]))
local alert = replace_plain(ARGV[9], '"\\u0001"', cjson.encode(base))
alert = replace_plain(alert, '"\\u0002"', cjson.encode(ARGV[10] .. string.sub(base, 1, 12) .. ARGV[11]))
return {3, append(KEYS[3], ARGV[5], ARGV[6], alert), alert}
"""
)

VOLUME = (
    COMMON
    + r"""
-- KEYS[1] volume hash, KEYS[2] cooldown hash, KEYS[3] alert stream (optional)
-- ARGV: op('add'|'close') istart bytes watermark interval alpha z floor min_n learning_end
--       cooldown cap maxlen alert_template title_prefix latest run_id
-- Hash fields: cur_start, cur_bytes, cur_ts, cur_run (the open interval, the latest event time
-- counted in it and the run that counted it), n, mean, var (EWMA over closed intervals in which the entity sent something),
-- last_start, last_bytes.
-- Bytes go to the interval of their own packet time. An 'add' for an interval before the open
-- one, or from another run for events no later than what the open interval already counted
-- (the same capture replayed into the same baseline), is not added: status 4, counted.
-- Template placeholders: "\u0001" -> facts object, "\u0002" -> title (ARGV[15] .. tail),
-- "\u0003" -> severity, "\u0004" -> alert ts (the end of the interval).
local K = KEYS[1]
local op = ARGV[1]
local istart, nbytes, watermark = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local interval, alpha, zt = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local floor, min_n, learning_end = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local cooldown, cap = tonumber(ARGV[11]), tonumber(ARGV[12])

local function mib(x) return string.format('%.1f MiB', x / 1048576) end

local function close(start, x)
  local stats = redis.call('HMGET', K, 'n', 'mean', 'var')  -- one call: each costs ~1 us of Lua glue
  local n = tonumber(stats[1] or '0')
  local mean = tonumber(stats[2] or '0')
  local var = tonumber(stats[3] or '0')
  local iend = start + interval
  local result = {0, '', ''}
  if n >= min_n and iend > learning_end and x >= floor and x > mean then
    local std = math.sqrt(var)
    if x - mean >= zt * std then
      if in_cooldown(KEYS[2], 'volume', iend, cooldown) then
        result = {2, '', ''}
      else
        stamp_cooldown(KEYS[2], 'volume', iend, cooldown, cap)
        local severity = 'warning'
        if x >= 10 * mean then severity = 'critical' end
        local facts = {bytes = x, mean = mean, std = std, intervals = n,
                       interval_start = start, interval = interval}
        local ratio = ''
        if std > 0 then facts['z'] = (x - mean) / std end
        if mean > 0 then
          facts['ratio'] = x / mean
          ratio = string.format(', %.1fx its usual %s', x / mean, mib(mean))
        end
        local tail = string.format('%s in %d s%s', mib(x), interval, ratio)
        local alert = replace_plain(ARGV[14], '"\\u0001"', cjson.encode(facts))
        alert = replace_plain(alert, '"\\u0002"', cjson.encode(ARGV[15] .. tail))
        alert = replace_plain(alert, '"\\u0003"', cjson.encode(severity))
        alert = replace_plain(alert, '"\\u0004"', string.format('%.6f', iend))
        result = {3, append(KEYS[3], ARGV[13], 'volume_spike', alert), alert}
      end
    end
  end
  if n == 0 then
    mean, var = x, 0
  else
    local diff = x - mean
    local incr = alpha * diff
    mean = mean + incr
    var = (1 - alpha) * (var + diff * incr)
  end
  redis.call('HSET', K, 'n', n + 1, 'mean', string.format('%.17g', mean),
             'var', string.format('%.17g', var), 'last_start', start, 'last_bytes', x)
  return result
end

-- the open interval's fields in one call (5,700 adds on the 5x bench capture)
local open = redis.call('HMGET', K, 'cur_start', 'cur_bytes', 'cur_ts', 'cur_run', 'last_start')
local cur = tonumber(open[1])
local latest = tonumber(ARGV[16])
if op == 'add' then
  if cur == nil then
    local last = tonumber(open[5])
    if last ~= nil and istart <= last then return {4, '', ''} end
    redis.call('HSET', K, 'cur_start', istart, 'cur_bytes', nbytes, 'cur_ts', ARGV[16], 'cur_run', ARGV[17])
    return {0, '', ''}
  end
  if istart > cur then
    local result = close(cur, tonumber(open[2] or '0'))
    redis.call('HSET', K, 'cur_start', istart, 'cur_bytes', nbytes, 'cur_ts', ARGV[16], 'cur_run', ARGV[17])
    return result
  end
  local cur_ts = tonumber(open[3] or '-1e300')
  local same_run = open[4] == ARGV[17]
  if istart < cur or (latest <= cur_ts and not same_run) then return {4, '', ''} end
  redis.call('HINCRBY', K, 'cur_bytes', nbytes)
  redis.call('HSET', K, 'cur_ts', ARGV[16], 'cur_run', ARGV[17])
  return {0, '', ''}
end
-- op == 'close': close the open interval once the watermark has passed its end
if cur ~= nil and cur + interval <= watermark then
  local result = close(cur, tonumber(open[2] or '0'))
  redis.call('HDEL', K, 'cur_start', 'cur_bytes', 'cur_ts', 'cur_run')
  return result
end
return {0, '', ''}
"""
)

START_LEARNING = r"""
-- KEYS[1] learning hash; ARGV: ts learning_seconds run_id
-- The first event starts the learning window. With detector shards each sees its own first
-- event; a shard of the same run with an earlier one moves the start back, so the window
-- starts at the run's first outbound event whichever shard answered first. Another run's
-- window is never moved.
local start = tonumber(redis.call('HGET', KEYS[1], 'start'))
local ts = tonumber(ARGV[1])
if start == nil or (ts < start and redis.call('HGET', KEYS[1], 'run') == ARGV[3]) then
  redis.call('HSET', KEYS[1], 'start', ARGV[1], 'end', string.format('%.17g', ts + tonumber(ARGV[2])), 'run', ARGV[3])
end
return redis.call('HMGET', KEYS[1], 'start', 'end')
"""

TOUCH = r"""
-- KEYS[1] entity hash; ARGV: ts display
-- last_seen only moves forward (two detectors may write out of order)
local last = tonumber(redis.call('HGET', KEYS[1], 'last_seen'))
if last == nil or tonumber(ARGV[1]) > last then redis.call('HSET', KEYS[1], 'last_seen', ARGV[1]) end
redis.call('HSETNX', KEYS[1], 'display', ARGV[2])
return 0
"""

APPEND_ONCE = r"""
-- Redis Cluster: the decision scripts cannot reach the alert stream (another slot), so the
-- process that won a decision appends the alert with this script afterwards.
-- KEYS[1] alert stream, KEYS[2] sorted set of appended alerts' digests (same slot: hash tag
-- naming the stream key). ARGV: maxlen, then per alert: ts kind alert_json
-- An alert whose exact JSON was appended before is skipped: an append retried after its reply
-- was lost (a master failing over), or a decision taken again because the promoted replica had
-- not yet received it, never writes a second entry. Returns one stream id ('' if skipped) per alert.
-- The digests are scored by packet time and capped like the stream (the oldest go first).
local cap = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV, 3 do
  local digest = redis.sha1hex(ARGV[i + 2])
  if redis.call('ZADD', KEYS[2], 'NX', ARGV[i], digest) == 1 then
    out[#out + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', cap, '*', 'kind', ARGV[i + 1], 'alert', ARGV[i + 2])
  else
    out[#out + 1] = ''
  end
end
local size = redis.call('ZCARD', KEYS[2])
if size > cap then redis.call('ZPOPMIN', KEYS[2], size - cap) end
return out
"""
