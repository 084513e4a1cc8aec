"""The Lua scripts of :class:`~resilient_db.fleet.RedisBreakerStore` (atomic on the server).

One hash per breaker (``<prefix>:<service>:<breaker>``) holds ``gen`` (bumped by every shared
decision), ``until`` (milliseconds of *Redis server time* until which the fleet is open; 0:
closed) and ``epoch`` (a token chosen when the hash is created, so a Redis that lost its
data is noticed). Times come from ``redis.call('TIME')``, never from the clients' clocks.
"""

from __future__ import annotations

__all__ = ["PUBLISH", "READ"]

# KEYS[1] the hash; ARGV[1] 'open' | 'closed', ARGV[2] open_for ms, ARGV[3] ttl ms,
# ARGV[4] epoch token for a new hash. Returns {gen, until, now, epoch}.
PUBLISH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'gen', 'until', 'epoch')
local gen = tonumber(h[1] or '0')
local untl = tonumber(h[2] or '0')
local epoch = h[3] or ARGV[4]
if ARGV[1] == 'open' then
  if untl > now then
    return {gen, untl, now, epoch}
  end
  gen = gen + 1
  untl = now + tonumber(ARGV[2])
else
  if untl == 0 and h[1] then
    return {gen, untl, now, epoch}
  end
  gen = gen + 1
  untl = 0
end
redis.call('HSET', KEYS[1], 'gen', gen, 'until', untl, 'epoch', epoch)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {gen, untl, now, epoch}
"""

# KEYS: the hashes. Returns {now, gen1, until1, epoch1, gen2, ...} ('' epoch: no hash).
READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now}
for i, key in ipairs(KEYS) do
  local h = redis.call('HMGET', key, 'gen', 'until', 'epoch')
  out[#out + 1] = tonumber(h[1] or '0')
  out[#out + 1] = tonumber(h[2] or '0')
  out[#out + 1] = h[3] or ''
end
return out
"""
