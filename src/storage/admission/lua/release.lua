--[[
  release.lua: undoes the admission of a request whose coupon will never be written.

  KEYS[1] stock    hash: next, issued
  KEYS[2] free     list of slots available again
  KEYS[3] users    hash: userId -> coupons admitted
  KEYS[4] pending  hash: requestId -> "slot|userId|admittedAtMs"
  ARGV[1] requestId
  ARGV[2] "1" to put the slot back on the free list, "0" to drop it (the slot is taken in Postgres)

  Returns 1 when an admission was undone, 0 when the request held none.
]]
local prior = redis.call('HGET', KEYS[4], ARGV[1])
if not prior then return 0 end
local slot, user = string.match(prior, '^(%d+)|(.*)|%d+$')
redis.call('HDEL', KEYS[4], ARGV[1])
-- A stock rebuilt from Postgres since then already counts from the committed rows.
if redis.call('EXISTS', KEYS[1]) == 1 then
  if tonumber(slot) > 0 and ARGV[2] == '1' then redis.call('RPUSH', KEYS[2], slot) end
  if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then redis.call('HDEL', KEYS[3], user) end
  redis.call('HINCRBY', KEYS[1], 'issued', -1)
end
return 1
