--[[
  admit.lua: the atomic admission step of one or more issue requests for one policy.
  Decides and takes a stock unit (slot) per request in one step, so a check and an increment can
  never be split. A web process admits all the requests of one event-loop turn in one call; a
  worker admits one request at a time.

  KEYS[1] meta     hash: status, method, startsAt, endsAt, total, perUser, validUntil, validDays, version
  KEYS[2] stock    hash: next (the next never-used slot), issued (coupons admitted)
  KEYS[3] free     list of slots given back by requests that failed for good
  KEYS[4] users    hash: userId -> coupons admitted to that user
  KEYS[5] pending  hash: requestId -> "slot|userId|admittedAtMs" until the coupon row is committed
  ARGV[1] accepted issue methods, comma separated (e.g. "FIRST_COME,DOWNLOAD")
  ARGV[2] "1": answer WAIT instead of SOLD_OUT while admissions are pending (a unit may come back)
  ARGV[3], ARGV[4], ... pairs of requestId (a retried request gets its own slot back) and userId

  Returns { validUntil, validDays, total, then per request: status, slot, resumed, admitted }:
    validUntil/validDays/total: the policy's rules ('' when unset or unknown);
    status ADMITTED (slot 0 for a policy without a quantity; resumed 1 when this request was
    already admitted by an earlier run; admitted the policy's admissions counting this one, 0 when
    resumed: how close the policy is to selling out), a refusal code (POLICY_NOT_FOUND,
    POLICY_NOT_ACTIVE, METHOD_NOT_SUPPORTED, OUTSIDE_ISSUE_WINDOW, USER_LIMIT_REACHED, SOLD_OUT),
    WAIT (stock is gone but pending admissions may give a unit back: ask again shortly), or
    META_MISSING / STOCK_MISSING when the caller must load that state from Postgres first.
]]
local meta = redis.call('HMGET', KEYS[1], 'status', 'method', 'startsAt', 'endsAt', 'total', 'perUser', 'validUntil', 'validDays')
local out = { meta[7] or '', meta[8] or '', meta[5] or '' }
local function answer(status, slot, resumed, admitted)
  out[#out + 1] = status
  out[#out + 1] = slot
  out[#out + 1] = resumed
  out[#out + 1] = admitted
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- A refusal that holds for every request not admitted before (the policy's state, not the user's).
local closed = nil
if not meta[1] then
  closed = 'META_MISSING'
elseif meta[1] == 'MISSING' then
  closed = 'POLICY_NOT_FOUND'
elseif not string.find(',' .. ARGV[1] .. ',', ',' .. meta[2] .. ',', 1, true) then
  closed = 'METHOD_NOT_SUPPORTED'
elseif meta[1] ~= 'ACTIVE' then
  closed = 'POLICY_NOT_ACTIVE'
elseif now < tonumber(meta[3]) or (meta[4] ~= '' and now >= tonumber(meta[4])) then
  closed = 'OUTSIDE_ISSUE_WINDOW'
elseif redis.call('EXISTS', KEYS[2]) == 0 then
  -- Last: a closed policy is refused without its stock, so the state of an ended policy, once
  -- dropped (free-ended.lua), is never rebuilt for requests that come too late.
  closed = 'STOCK_MISSING'
end

local waitWhenPending = ARGV[2] == '1'
for i = 3, #ARGV - 1, 2 do
  local requestId, userId = ARGV[i], ARGV[i + 1]
  local prior = redis.call('HGET', KEYS[5], requestId)
  if prior then
    answer('ADMITTED', tonumber(string.match(prior, '^(%d+)')), 1, 0)
  elseif closed then
    answer(closed, 0, 0, 0)
  elseif tonumber(redis.call('HGET', KEYS[4], userId) or '0') >= tonumber(meta[6]) then
    answer('USER_LIMIT_REACHED', 0, 0, 0)
  else
    local slot = 0
    local refusal = nil
    if meta[5] ~= '' then
      local freed = redis.call('LPOP', KEYS[3])
      if freed then
        slot = tonumber(freed)
      else
        local nextSlot = tonumber(redis.call('HGET', KEYS[2], 'next'))
        if nextSlot > tonumber(meta[5]) then
          refusal = (waitWhenPending and redis.call('HLEN', KEYS[5]) > 0) and 'WAIT' or 'SOLD_OUT'
        else
          slot = nextSlot
          redis.call('HSET', KEYS[2], 'next', nextSlot + 1)
        end
      end
    end
    if refusal then
      answer(refusal, 0, 0, 0)
    else
      redis.call('HINCRBY', KEYS[4], userId, 1)
      local admitted = redis.call('HINCRBY', KEYS[2], 'issued', 1)
      redis.call('HSET', KEYS[5], requestId, slot .. '|' .. userId .. '|' .. now)
      answer('ADMITTED', slot, 0, admitted)
    end
  end
end
return out
