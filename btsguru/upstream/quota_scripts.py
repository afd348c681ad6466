"""The Lua scripts of `upstream.quota`: each check-and-take, report and restore is one
script, so that two processes can never together exceed a limit. Every key of a script
carries the sport's Cluster hash tag; what the keys and arguments are is written at the
top of each."""

TAKE_SCRIPT = """
-- KEYS: 1 day hash, 2 window zset, 3 sequence, 4 minute cap hash, 5 minute block,
--       6 upstream report hash, 7 failover hash
-- ARGV: 1 now_ms, 2 day_limit, 3 minute_limit, 4 user (0/1), 5 day reserve fraction,
--       6 minute reserve fraction, 7 window_ms, 8 day key ttl s, 9 this token's member,
--       10 this process's field, 11 its tokens today, 12 its last member ('' none),
--       13 that token's time ms, 14 the careful margin (requests)
local now = tonumber(ARGV[1])
local day_limit = tonumber(ARGV[2])
local minute_limit = tonumber(ARGV[3])
local user = ARGV[4] == '1'
local window = tonumber(ARGV[7])

-- Redis lost tokens this process took (a failover): it puts them back first
local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[10])) or 0
if mine < tonumber(ARGV[11]) then return {0, 'rollback', 0, 0, 0} end
if ARGV[12] ~= '' and tonumber(ARGV[13]) > now - window
    and not redis.call('ZSCORE', KEYS[2], ARGV[12]) then
  return {0, 'rollback', 0, 0, 0}
end
local failover = redis.call('HMGET', KEYS[7], 'settle', 'careful')
local settle = tonumber(failover[1])
if settle and settle > now then return {0, 'settling', settle - now, 0, 0} end

local up = redis.call('HMGET', KEYS[6], 'day_limit', 'minute_limit')
if up[1] then day_limit = math.min(day_limit, tonumber(up[1])) end
if up[2] then minute_limit = math.min(minute_limit, tonumber(up[2])) end
local careful = tonumber(failover[2])
if careful and careful > now then minute_limit = minute_limit - tonumber(ARGV[14]) end

local day = redis.call('HMGET', KEYS[1], 'used', 'spent', 'cap')
local used = tonumber(day[1]) or 0
local day_left = day_limit - used
if day[3] then day_left = math.min(day_left, tonumber(day[3]) - used) end
if day[2] then day_left = 0 end
if day_left < 1 then return {0, 'day', 0, used, day_left} end
if user and day_left - math.floor(day_limit * tonumber(ARGV[5])) < 1 then
  return {0, 'day_reserved', 0, used, day_left}
end

-- expiry times are the injected clock's, kept in the values; Redis TTLs only clean up
local block = tonumber(redis.call('GET', KEYS[5]))
if block and block > now then return {0, 'minute_spent', block - now, used, day_left} end

redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[2])
local seq = tonumber(redis.call('GET', KEYS[3])) or 0
local need = 1
if user then need = 1 + math.floor(minute_limit * tonumber(ARGV[6])) end
local wait = 0
if minute_limit - count < need then
  -- the k-th oldest token must leave the window before enough room frees
  local k = need - (minute_limit - count)
  local entry = redis.call('ZRANGE', KEYS[2], k - 1, k - 1, 'WITHSCORES')
  if entry[2] then wait = tonumber(entry[2]) + window - now else wait = window end
end
local cap_fields = redis.call('HMGET', KEYS[4], 'total', 'until')
local cap = nil
if cap_fields[1] and tonumber(cap_fields[2]) > now then cap = tonumber(cap_fields[1]) end
if cap and cap - seq < need then wait = math.max(wait, tonumber(cap_fields[2]) - now) end
if wait > 0 then
  local reason = 'minute'
  if user and minute_limit - count >= 1 and (not cap or cap - seq >= 1) then
    reason = 'minute_reserved'
  end
  return {0, reason, wait, used, day_left}
end

used = redis.call('HINCRBY', KEYS[1], 'used', 1)
redis.call('HINCRBY', KEYS[1], ARGV[10], 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
seq = redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], 172800)
redis.call('ZADD', KEYS[2], now, ARGV[9])
redis.call('PEXPIRE', KEYS[2], window + 1000)
day_left = day_left - 1

-- the day's warnings, once per level per day, whichever process crosses them
local consumed = day_limit - day_left
local warn80, warn95 = 0, 0
if consumed >= day_limit * 0.95 then warn95 = redis.call('HSETNX', KEYS[1], 'warn95', 1) end
if consumed >= day_limit * 0.80 then warn80 = redis.call('HSETNX', KEYS[1], 'warn80', 1) end
return {1, 'ok', 0, used, day_left, seq, count + 1, warn80, warn95, day_limit}
"""

RESTORE_SCRIPT = """
-- KEYS: 1 day hash, 2 window zset, 3 sequence, 4 failover hash
-- ARGV: 1 now_ms, 2 this process's field, 3 its tokens today, 4 the highest sequence it
--       saw, 5 settle until ms, 6 careful until ms, 7 window_ms, 8 day key ttl s,
--       then pairs: member, time ms (its tokens of the last window)
local lost = 0
local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[2])) or 0
local own = tonumber(ARGV[3])
if own > mine then
  redis.call('HINCRBY', KEYS[1], 'used', own - mine)
  redis.call('HSET', KEYS[1], ARGV[2], own)
  lost = own - mine
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
local seq = tonumber(redis.call('GET', KEYS[3])) or 0
if tonumber(ARGV[4]) > seq then redis.call('SET', KEYS[3], ARGV[4], 'EX', 172800) end
local added = 0
for i = 9, #ARGV, 2 do
  added = added + redis.call('ZADD', KEYS[2], 'NX', ARGV[i + 1], ARGV[i])
end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[7]) + 1000)
local current = redis.call('HMGET', KEYS[4], 'settle', 'careful')
if not current[1] or tonumber(current[1]) < tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[4], 'settle', ARGV[5])
end
if not current[2] or tonumber(current[2]) < tonumber(ARGV[6]) then
  redis.call('HSET', KEYS[4], 'careful', ARGV[6])
end
redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[6]) - tonumber(ARGV[1]) + 1000)
return {lost, added}
"""

NOTE_SCRIPT = """
-- KEYS: 1 day hash, 2 sequence, 3 minute cap hash, 4 upstream report hash
-- ARGV: 1 now_ms, 2 day_limit, 3 day_remaining, 4 minute_limit, 5 minute_remaining,
--       6 the token's day sequence, 7 the token's minute sequence, 8 window_ms,
--       9 day key ttl s, 10 report ttl s   ('' = unknown)
local function num(s) if s == '' then return nil end return tonumber(s) end
local fields = {'noted_at', ARGV[1]}
local names = {'day_limit', 'day_remaining', 'minute_limit', 'minute_remaining'}
for i, name in ipairs(names) do
  if ARGV[i + 1] ~= '' then
    table.insert(fields, name)
    table.insert(fields, ARGV[i + 1])
  end
end
redis.call('HSET', KEYS[4], unpack(fields))
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[10]))

local day_remaining = num(ARGV[3])
if day_remaining then
  local seq = num(ARGV[6]) or tonumber(redis.call('HGET', KEYS[1], 'used')) or 0
  local cap_seq = tonumber(redis.call('HGET', KEYS[1], 'cap_seq'))
  if not cap_seq or seq >= cap_seq then
    redis.call('HSET', KEYS[1], 'cap', seq + day_remaining, 'cap_seq', seq)
    redis.call('EXPIRE', KEYS[1], tonumber(ARGV[9]))
  end
end
local minute_remaining = num(ARGV[5])
if minute_remaining then
  local now = tonumber(ARGV[1])
  local seq = num(ARGV[7]) or tonumber(redis.call('GET', KEYS[2])) or 0
  local current = redis.call('HMGET', KEYS[3], 'seq', 'until')
  local cap_seq = tonumber(current[1])
  if not cap_seq or tonumber(current[2]) <= now or seq >= cap_seq then
    local window = tonumber(ARGV[8])
    redis.call('HSET', KEYS[3], 'total', seq + minute_remaining, 'seq', seq,
               'until', now + window)
    redis.call('PEXPIRE', KEYS[3], window)
  end
end
return 1
"""
