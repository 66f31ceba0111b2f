--[[
  settle.lua: closes the admission of a request whose coupon row is committed. If the pending
  admission holds the coupon's own slot it is simply closed; if it holds another one (a later run
  of the same request was admitted afresh after an earlier run had written the coupon), that
  second unit of stock is given back.

  KEYS[1] stock    hash: next, issued
  KEYS[2] free     list of slots available again
  KEYS[3] users    hash: userId -> coupons admitted
  KEYS[4] pending  hash: requestId -> "slot|userId|admittedAtMs"
  ARGV[1] requestId
  ARGV[2] the committed coupon's slot ("0" for a policy without a quantity)

  Returns 1 when closed, 2 when a second admission was given back, 0 when nothing was pending.
]]
local prior = redis.call('HGET', KEYS[4], ARGV[1])
if not prior then return 0 end
local slot, user = string.match(prior, '^(%d+)|(.*)|%d+$')
redis.call('HDEL', KEYS[4], ARGV[1])
if slot == ARGV[2] then return 1 end
if redis.call('EXISTS', KEYS[1]) == 1 then
  if tonumber(slot) > 0 then redis.call('RPUSH', KEYS[2], slot) end
  if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then redis.call('HDEL', KEYS[3], user) end
  redis.call('HINCRBY', KEYS[1], 'issued', -1)
end
return 2
