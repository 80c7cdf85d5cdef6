"""Lua scripts run by RedisStore; the in-memory store (memory.py) mirrors them line for line.

Time comes from the Redis server (TIME), so replicas with skewed clocks share one timeline.
Buckets are passed as KEYS (token windows take two: the log and its amounts hash, and so do
a counted request window 'm', which is the count of its token window's entries, always sent
in the same call as that token window, and a concurrency set, whose hash holds the slots of
quota leases: one entry, one lease, however many requests or slots it holds); ARGV is
``rid``, the bucket specs as one string ``kind:limit:span_ms|...`` (few arguments are cheap to
send) and the request's tokens: token and provider buckets take that many, the rest take 1.

Every amount is checked before anything is written: a whole number in range, else an error reply
starting with ``AMOUNT_ERROR`` (RedisStore raises AmountError for it: the caller's mistake, not an
outage), so no script ever holds a negative reservation or overflows a counter.
"""
from proxy.store.base import MAX_AMOUNT

AMOUNT_ERROR = "LANEWAY_AMOUNT"

# whole(value, low): ARGV value as a number if it is a whole number in [low, MAX_AMOUNT], else nil.
# bad(what, low): the error reply for an amount that is not.
_AMOUNTS = f"""
local MAX_AMOUNT = {MAX_AMOUNT}
local function whole(value, low)
  if type(value) ~= 'string' or #value > 17 or not string.match(value, '^%-?%d+$') then return nil end
  local number = tonumber(value)
  if number < low or number > MAX_AMOUNT then return nil end
  return number
end
local function bad(what, low)
  return redis.error_reply('{AMOUNT_ERROR} ' .. what .. ' must be a whole number from ' .. low .. ' to ' .. MAX_AMOUNT)
end
"""

_PRELUDE = _AMOUNTS + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid = ARGV[1]
local tokens_arg = ARGV[3]
local tokens = tonumber(tokens_arg) or 0
local kinds, limits, spans, amounts, logs, hashes = {}, {}, {}, {}, {}, {}
local n, ki = 0, 1
for kind, limit, span in string.gmatch(ARGV[2], '(%a):(%d+):(%d+)') do
  n = n + 1
  kinds[n] = kind; limits[n] = tonumber(limit); spans[n] = tonumber(span)
  if kind == 't' or kind == 'p' then amounts[n] = tokens else amounts[n] = 1 end
  logs[n] = KEYS[ki]; ki = ki + 1
  if kind == 't' or kind == 'm' or kind == 'c' then hashes[n] = KEYS[ki]; ki = ki + 1 end
end
-- A log entry's amount: tokens, or 'tokens|requests' for a lease's entry that counts several
-- requests (the hash's '_n' holds their sum beyond one each, so a counted window is ZCARD + '_n').
local function entry(amount)
  local plain = tonumber(amount)
  if plain or not amount then return plain or 0, 1 end
  local t, r = string.match(amount, '^(%d+)|(%d+)$')
  return tonumber(t), tonumber(r)
end
"""

# What ADMIT and LEASE share: the amounts checked, then check() finds the first bucket that
# cannot take ``amounts`` (its index and wait) or fills ``used`` and ``provider`` for the writes.
_CHECKS = _PRELUDE + """
if not whole(tokens_arg, 0) then return bad('tokens', 0) end
for i = 1, n do
  if amounts[i] < 1 then return bad('tokens', 1) end  -- a token or provider bucket takes at least one
end

-- Drop entries older than the window; return what is left in use.
local trimmed, firsts = {}, {}  -- token logs already trimmed in this call; their oldest entry's time
local states = {}  -- token hash -> its '_t', '_x', '_n', read once per call
local kept_until = {}  -- a token window's '_x': when its log and hash expire (refreshed only when near)
local function used_in(i)
  local kind, key = kinds[i], logs[i]
  if kind == 'n' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - spans[i])
    return redis.call('ZCARD', key)
  elseif kind == 'c' then  -- leases' slots beyond one each are '_w' in its hash
    local extra = tonumber(redis.call('HGET', hashes[i], '_w') or '0')
    while extra > 0 do
      local gone = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, 256)
      if #gone == 0 then break end
      local held = redis.call('HMGET', hashes[i], unpack(gone))
      local freed = 0
      for j = 1, #gone do freed = freed + (tonumber(held[j]) or 1) - 1 end
      redis.call('ZREM', key, unpack(gone))
      redis.call('HDEL', hashes[i], unpack(gone))
      if freed > 0 then extra = redis.call('HINCRBY', hashes[i], '_w', -freed) end
    end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    return redis.call('ZCARD', key) + extra
  end
  -- a token log (for 'm' the one its token window shares): whichever comes first drops the old entries
  local freed, counted = 0, 0
  while not trimmed[key] do
    local old = redis.call('ZRANGEBYSCORE', key, '-inf', now - spans[i], 'LIMIT', 0, 256)
    if #old == 0 then break end
    local amts = redis.call('HMGET', hashes[i], unpack(old))
    for j = 1, #old do
      local t, r = entry(amts[j])
      freed = freed + t; counted = counted + r - 1
    end
    redis.call('HDEL', hashes[i], unpack(old))
    redis.call('ZREM', key, unpack(old))
  end
  trimmed[key] = true
  if freed > 0 then redis.call('HINCRBY', hashes[i], '_t', -freed) end
  if counted > 0 then redis.call('HINCRBY', hashes[i], '_n', -counted) end
  local state = states[key]
  if not state then  -- one read serves a token window and the request window that counts its log
    state = redis.call('HMGET', hashes[i], '_t', '_x', '_n')
    states[key] = state
  end
  if kind == 'm' then return redis.call('ZCARD', key) + tonumber(state[3] or '0') end
  kept_until[i] = tonumber(state[2] or '0')
  return tonumber(state[1] or '0')
end

-- Milliseconds until enough old entries leave the window for amount to fit.
local function wait_for(i, used)
  local kind, key, amount, limit = kinds[i], logs[i], amounts[i], limits[i]
  if amount > limit then return -1 end
  if kind == 'c' then
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    return math.max(1, math.min(1000, tonumber(first[2]) - now))
  elseif kind == 'n' or (kind == 'm' and used == redis.call('ZCARD', key)) then  -- one request an entry
    local first = redis.call('ZRANGE', key, used - limit, used - limit, 'WITHSCORES')
    return math.max(1, tonumber(first[2]) + spans[i] - now)
  end
  local start = 0  -- oldest first, until enough has left: tokens, or (a lease's entries) requests
  while true do
    local entries = redis.call('ZRANGE', key, start, start + 255, 'WITHSCORES')
    if #entries == 0 then return spans[i] end
    local ids = {}
    for j = 1, #entries, 2 do ids[#ids + 1] = entries[j] end
    local amts = redis.call('HMGET', hashes[i], unpack(ids))
    for j = 1, #ids do
      local t, r = entry(amts[j])
      if kind == 'm' then used = used - r else used = used - t end
      if used + amount <= limit then return math.max(1, tonumber(entries[2 * j]) + spans[i] - now) end
    end
    start = start + 256
  end
end

-- Provider word: every window still before its reset must have room; 'x' is exhausted-until.
-- Answers the wait and those live windows: {field = its remaining's field, requests = a request
-- window (else tokens), left = its remaining}, what the writes below debit.
local function provider_wait(i)
  local fields = redis.call('HGETALL', logs[i])
  local state = {}
  for j = 1, #fields, 2 do state[fields[j]] = fields[j + 1] end
  local wait, live = 0, {}
  local x = tonumber(state['x'] or '0')
  if x > now then wait = x - now end
  for field, value in pairs(state) do
    if string.sub(field, -2) == ':e' and tonumber(value) > now then
      local w = string.sub(field, 1, -3)
      local window = {field = w .. ':r', requests = state[w .. ':k'] == 'requests', left = tonumber(state[w .. ':r'] or '0')}
      live[#live + 1] = window
      if window.left < (window.requests and 1 or amounts[i]) then wait = math.max(wait, tonumber(value) - now) end
    end
  end
  return wait, live
end

local used, provider = {}, {}
local function check()
  for i = 1, n do
    if kinds[i] == 'p' then
      local wait, live = provider_wait(i)
      if wait > 0 then return {i - 1, wait} end
      provider[i] = live
    else
      used[i] = used_in(i)
      if used[i] + amounts[i] > limits[i] then return {i - 1, wait_for(i, used[i])} end
    end
  end
  return nil
end
"""

ADMIT = _CHECKS + """
local refused = check()
if refused then return refused end

local out = {-1, 0}
for i = 1, n do
  local kind, key = kinds[i], logs[i]
  if kind == 'p' then
    for _, window in ipairs(provider[i]) do
      redis.call('HINCRBY', key, window.field, -(window.requests and 1 or amounts[i]))
    end
    out[#out + 1] = -1; out[#out + 1] = -1
  elseif kind == 'm' then
    out[#out + 1] = limits[i] - used[i] - 1; out[#out + 1] = 0  -- its reset: its token window's, below
  else
    local score = now
    if kind == 'c' then score = now + spans[i] end
    redis.call('ZADD', key, score, rid)
    if kind ~= 't' then
      redis.call('PEXPIRE', key, spans[i] + 1000)
    elseif kept_until[i] >= now + spans[i] + 1000 then  -- both keys outlive this entry's window already
      redis.call('HSET', hashes[i], rid, amounts[i])
      redis.call('HINCRBY', hashes[i], '_t', amounts[i])
    else  -- twice the window, so this happens about once a window rather than once a request
      local ttl = 2 * spans[i] + 1000
      redis.call('HSET', hashes[i], rid, amounts[i], '_x', now + ttl)
      redis.call('HINCRBY', hashes[i], '_t', amounts[i])
      redis.call('PEXPIRE', key, ttl)
      redis.call('PEXPIRE', hashes[i], ttl)
    end
    local reset = 0
    if kind ~= 'c' then
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      firsts[key] = tonumber(first[2])
      reset = math.max(0, firsts[key] + spans[i] - now)
    end
    out[#out + 1] = limits[i] - used[i] - amounts[i]; out[#out + 1] = reset
  end
end
for i = 1, n do
  if kinds[i] == 'm' then out[2 * i + 2] = math.max(0, firsts[logs[i]] + spans[i] - now) end
end
return out
"""

# A quota lease: one call borrows up to ARGV[4] requests, ARGV[5] tokens and ARGV[6] concurrency
# slots of every bucket (ARGV[3], the first request's tokens, is the least it may take: the checks
# run with it, so a refusal answers as ADMIT would). Each bucket grants what it has room for, the
# lease takes the smallest grant of each kind. It is one entry per log, whatever it holds (a
# request window without a token window, which keeps no amounts, takes one member per request,
# rid, rid#2, ...). Window entries are stamped ARGV[7] ms ahead (the lease's end), so they count at
# least as long as any request admitted under it. Answers {-1, 0, requests, tokens, slots,
# remaining, reset, ...}.
LEASE = _CHECKS + """
local want_requests, want_tokens, want_slots, ahead = whole(ARGV[4], 1), whole(ARGV[5], 1), whole(ARGV[6], 1), whole(ARGV[7], 0)
if not (want_requests and want_tokens and want_slots and ahead) then return bad('a lease', 1) end
if want_tokens < tokens then return bad('a lease', tokens) end
local refused = check()
if refused then return refused end

local grant = {r = want_requests, t = want_tokens, c = want_slots}
local function cap(what, room) if room < grant[what] then grant[what] = room end end
local counted = {}  -- token logs a request window counts
for i = 1, n do
  local kind = kinds[i]
  if kind == 'p' then
    for _, window in ipairs(provider[i]) do cap(window.requests and 'r' or 't', window.left) end
  elseif kind == 'n' or kind == 'm' then
    cap('r', limits[i] - used[i])
    if kind == 'm' then counted[logs[i]] = true end
  else cap(kind, limits[i] - used[i]) end
end

local stamp = now + ahead
local out = {-1, 0, grant.r, grant.t, grant.c}
for i = 1, n do
  local kind, key = kinds[i], logs[i]
  local took = (kind == 't') and grant.t or ((kind == 'c') and grant.c or grant.r)
  if kind == 'p' then
    for _, window in ipairs(provider[i]) do
      redis.call('HINCRBY', key, window.field, -(window.requests and grant.r or grant.t))
    end
    out[#out + 1] = -1; out[#out + 1] = -1
  elseif kind == 'c' then
    redis.call('ZADD', key, now + spans[i], rid)
    redis.call('HSET', hashes[i], rid, grant.c)
    redis.call('HINCRBY', hashes[i], '_w', grant.c - 1)
    redis.call('PEXPIRE', key, spans[i] + 1000)
    redis.call('PEXPIRE', hashes[i], spans[i] + 1000)
    out[#out + 1] = limits[i] - used[i] - grant.c; out[#out + 1] = 0
  else
    if kind == 'n' then
      local members = {}
      for j = 1, grant.r do
        members[#members + 1] = stamp
        members[#members + 1] = (j == 1) and rid or (rid .. '#' .. j)
      end
      redis.call('ZADD', key, unpack(members))
      redis.call('PEXPIRE', key, spans[i] + ahead + 1000)
    elseif kind == 't' then
      redis.call('ZADD', key, stamp, rid)
      local ttl = 2 * spans[i] + ahead + 1000
      local amount = grant.t
      if counted[key] and grant.r > 1 then
        amount = grant.t .. '|' .. grant.r
        redis.call('HINCRBY', hashes[i], '_n', grant.r - 1)
      end
      redis.call('HSET', hashes[i], rid, amount, '_x', now + ttl)
      redis.call('HINCRBY', hashes[i], '_t', grant.t)
      redis.call('PEXPIRE', key, ttl)
      redis.call('PEXPIRE', hashes[i], ttl)
    end
    out[#out + 1] = limits[i] - used[i] - took; out[#out + 1] = 0  -- its reset once every log is written, below
  end
end
for i = 1, n do
  if kinds[i] ~= 'p' and kinds[i] ~= 'c' then
    local first = redis.call('ZRANGE', logs[i], 0, 0, 'WITHSCORES')
    out[2 * i + 5] = math.max(0, tonumber(first[2]) + spans[i] - now)
  end
end
return out
"""

# A lease's end: ARGV[3] its tokens used (and still reserved), ARGV[4] the requests it kept of
# ARGV[5] granted, ARGV[6] the slots still held (of ARGV[7] granted). Unused requests and free
# slots leave the logs; the token entry becomes ARGV[3] (or goes, with every request unused).
END_LEASE = _PRELUDE + """
local kept, granted, held, slots = whole(ARGV[4], 0), whole(ARGV[5], 1), whole(ARGV[6], 0), whole(ARGV[7], 1)
if not (whole(tokens_arg, 0) and kept and granted and held and slots) then return bad('a lease end', 0) end
local counted = {}
for i = 1, n do if kinds[i] == 'm' then counted[logs[i]] = true end end
for i = 1, n do
  local kind, key = kinds[i], logs[i]
  if kind == 'n' and kept < granted then
    local gone = {}
    for j = kept + 1, granted do gone[#gone + 1] = (j == 1) and rid or (rid .. '#' .. j) end
    redis.call('ZREM', key, unpack(gone))
  elseif kind == 'c' then
    local old = tonumber(redis.call('HGET', hashes[i], rid) or '0')
    if old > 0 then
      if held == 0 then
        redis.call('ZREM', key, rid)
        redis.call('HDEL', hashes[i], rid)
        redis.call('HINCRBY', hashes[i], '_w', 1 - old)
      else
        redis.call('HSET', hashes[i], rid, held)
        redis.call('HINCRBY', hashes[i], '_w', held - old)
      end
    end
  elseif kind == 't' then
    local old = redis.call('HGET', hashes[i], rid)
    if old then
      local was, requests = entry(old)
      local now_requests = 1
      if kept == 0 then
        redis.call('HDEL', hashes[i], rid)
        redis.call('ZREM', key, rid)
        redis.call('HINCRBY', hashes[i], '_t', -was)
      else
        local amount = tokens
        if counted[key] and kept > 1 then amount = tokens .. '|' .. kept; now_requests = kept end
        redis.call('HSET', hashes[i], rid, amount)
        redis.call('HINCRBY', hashes[i], '_t', tokens - was)
      end
      if requests ~= now_requests then redis.call('HINCRBY', hashes[i], '_n', now_requests - requests) end
    end
  end
end
return 0
"""

# ARGV[3] is the real token count, or '-' to undo the reservation entirely.
SETTLE = _PRELUDE + """
local undo = tokens_arg == '-'
if not undo and not whole(tokens_arg, 0) then return bad('used tokens', 0) end
for i = 1, n do
  local kind, key = kinds[i], logs[i]
  if kind == 't' then
    local old = redis.call('HGET', hashes[i], rid)
    if old then
      if undo then
        redis.call('HDEL', hashes[i], rid)
        redis.call('ZREM', key, rid)
        redis.call('HINCRBY', hashes[i], '_t', -tonumber(old))
      else
        redis.call('HSET', hashes[i], rid, tokens)
        redis.call('HINCRBY', hashes[i], '_t', tonumber(tokens) - tonumber(old))
      end
    end
  elseif kind == 'c' or (kind == 'n' and undo) then
    redis.call('ZREM', key, rid)
  end
end
return 0
"""

# Slots stay as long as their lease set and hash (a lease's slots are one entry of both).
RENEW = _PRELUDE + """
for i = 1, n do
  if kinds[i] == 'c' then
    redis.call('ZADD', logs[i], 'XX', now + spans[i], rid)
    redis.call('PEXPIRE', logs[i], spans[i] + 1000)
    redis.call('PEXPIRE', hashes[i], spans[i] + 1000)
  end
end
return 0
"""

# KEYS[1]: the provider hash. ARGV: exhausted_ms, then triples window, kind, remaining, reset_ms.
LEARN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1]
local longest = tonumber(ARGV[1])
if longest > 0 then
  local x = tonumber(redis.call('HGET', key, 'x') or '0')
  redis.call('HSET', key, 'x', math.max(x, now + longest))
end
for j = 2, #ARGV, 4 do
  local w, reset = ARGV[j], tonumber(ARGV[j + 3])
  redis.call('HSET', key, w .. ':k', ARGV[j + 1], w .. ':r', ARGV[j + 2], w .. ':e', now + reset)
  if reset > longest then longest = reset end
end
local ttl = redis.call('PTTL', key)
if longest + 1000 > ttl then redis.call('PEXPIRE', key, longest + 1000) end
return 0
"""

# Budget counters: plain integers (micro-USD) outside the bucket specs above, since they count
# money, not tokens. KEYS: the counters; ARGV[1]: the amount; then per key its hard limit
# (-1: none) and its expiry (epoch ms). Reserves in all or none; answers the totals before.
SPEND_RESERVE = _AMOUNTS + """
local amount = whole(ARGV[1], 0)
if not amount then return bad('a budget reservation', 0) end
for i = 1, #KEYS do
  if not whole(ARGV[2 * i], -1) then return bad('a hard limit', -1) end
  if not whole(ARGV[2 * i + 1], 0) then return bad('an expiry', 0) end
end
local spent = {}
for i = 1, #KEYS do
  spent[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  local hard = tonumber(ARGV[2 * i])
  if hard >= 0 and spent[i] + amount > hard then return {i - 1, spent[i]} end
end
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], amount)
  redis.call('PEXPIREAT', KEYS[i], ARGV[2 * i + 1])
end
return {-1, unpack(spent)}
"""

# KEYS: the counters; ARGV[1]: the delta; ARGV[1 + i]: key i's expiry (epoch ms).
SPEND_ADJUST = _AMOUNTS + """
if not whole(ARGV[1], -MAX_AMOUNT) then return bad('a budget adjustment', -MAX_AMOUNT) end
for i = 1, #KEYS do
  if not whole(ARGV[1 + i], 0) then return bad('an expiry', 0) end
end
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[1])
  redis.call('PEXPIREAT', KEYS[i], ARGV[1 + i])
end
return 0
"""
