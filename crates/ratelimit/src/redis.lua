-- sofiia-ratelimit: one all-or-none GCRA decision over several buckets.
--
-- KEYS[i]      the bucket of charge i (on a cluster, all in one hash slot)
-- ARGV[1]      now in microseconds since the epoch, or '' to use TIME
-- ARGV[2]      milliseconds each key lives past its idle time
-- ARGV[3]      'charge', 'peek' or 'refund:<id>'
-- ARGV[2 + 2i] charge i's emission interval T in microseconds
-- ARGV[3 + 2i] charge i's count N (its window W is N * T)
--
-- A bucket's value is its theoretical arrival time (TAT) in microseconds.
-- A charge is allowed when max(TAT, now) + T - now <= W. Every TAT is
-- computed first; only when every charge is allowed, and the mode is
-- 'charge', are they all written, each with a TTL that ends when the bucket
-- is idle (TAT <= now), when a missing key means the same as the stored
-- one. 'peek' decides the same way and writes nothing. Values stay below
-- 2^53, so Lua's doubles hold them exactly. The Rust side (gcra.rs) repeats
-- this arithmetic to report per-policy state; keep the two in step.
--
-- Returns {allowed (1 or 0), now, tat_1, ..., tat_n}, tat_i being bucket
-- i's TAT raised to at least now, just before charge i.
--
-- 'refund:<id>' takes back one earlier 'charge' of the same charges (a
-- decision spread over several slots whose later part was refused): each
-- TAT moves back by T, and a bucket left idle is deleted. <id> names the
-- refund: a marker key beside KEYS[1] (same hash tag, so same slot) makes
-- a second run of it (a cluster client resending a command whose
-- connection dropped) a no-op, so no charge is ever taken back twice.
-- Returns {1, now}.

local now
if ARGV[1] == '' then
  -- Scripts are replicated by their effects (Redis >= 5 default, the only
  -- mode since 7), so reading the clock before writing is allowed.
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local grace = tonumber(ARGV[2])
local mode = ARGV[3]

local function stored_tat(key)
  local stored = redis.call('GET', key)
  if not stored then
    return nil
  end
  local tat = tonumber(stored)
  if tat == nil then
    return redis.error_reply('ERR sofiia-ratelimit: a bucket holds a value that is not a TAT')
  end
  return tat
end

local function write(key, tat)
  if tat <= now then
    redis.call('DEL', key)
  else
    local ttl = math.ceil((tat - now) / 1000) + grace
    redis.call('SET', key, string.format('%d', tat), 'PX', string.format('%d', ttl))
  end
end

if string.sub(mode, 1, 7) == 'refund:' then
  -- Every value is checked before the first write.
  for i = 1, #KEYS do
    local tat = stored_tat(KEYS[i])
    if type(tat) == 'table' then return tat end
  end
  local marker = KEYS[1] .. ':refund:' .. string.sub(mode, 8)
  if not redis.call('SET', marker, '1', 'NX', 'PX', 60000) then
    return {1, now}
  end
  for i = 1, #KEYS do
    local tat = stored_tat(KEYS[i])
    if tat then
      write(KEYS[i], tat - tonumber(ARGV[2 + 2 * i]))
    end
  end
  return {1, now}
end

local pending = {}
local reply = {0, now}
local allowed = 1
for i = 1, #KEYS do
  local key = KEYS[i]
  local interval = tonumber(ARGV[2 + 2 * i])
  local window = interval * tonumber(ARGV[3 + 2 * i])
  -- A bucket named earlier in this decision is seen as that charge left it.
  local tat = pending[key]
  if tat == nil then
    tat = stored_tat(key)
    if type(tat) == 'table' then return tat end
    if tat == nil then
      tat = now
    end
  end
  if tat < now then
    tat = now
  end
  reply[2 + i] = tat
  if tat + interval - now <= window then
    pending[key] = tat + interval
  else
    allowed = 0
  end
end

if allowed == 1 and mode == 'charge' then
  for key, tat in pairs(pending) do
    write(key, tat)
  end
end
reply[1] = allowed
return reply
