--[[
  free-ended.lua: drops the admission state of a policy that can admit nobody any more (ENDED, or
  its issue window closed a while ago), once no admission of it is pending.

  KEYS[1] stock    hash: next, issued
  KEYS[2] free     list of slots available again
  KEYS[3] users    hash: userId -> coupons admitted (a field per user ever admitted: the bulk of it)
  KEYS[4] pending  hash: requestId -> "slot|userId|admittedAtMs"

  Returns 1 when the state was dropped, 0 when an admission is still pending (it must settle or be
  released against this state first; the next pass tries again).

  Nothing is lost: the state is rebuilt from Postgres should the policy admit again (its window
  extended); admit.lua refuses a closed policy before it looks for its stock, so requests for an
  ended policy never rebuild it.
]]
if redis.call('HLEN', KEYS[4]) > 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return 1
