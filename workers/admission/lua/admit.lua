--[[
  admit.lua: the atomic admission step of one issue request for one policy.
  Decides and takes a stock unit (slot) in one step, so a check and an increment can never be split.

  KEYS[1] meta     hash: status, method, startsAt, endsAt, total, perUser, validUntil, validDays, version
  KEYS[2] stock    hash: next (the next never-used slot), issued (coupons admitted)
  KEYS[3] free     list of slots given back by requests that failed for good
  KEYS[4] users    hash: userId -> coupons admitted to that user
  KEYS[5] pending  hash: requestId -> "slot|userId|admittedAtMs" until the coupon row is committed
  ARGV[1] requestId (the job id; a retried job gets its own slot back)
  ARGV[2] userId
  ARGV[3] accepted issue methods, comma separated (e.g. "FIRST_COME,DOWNLOAD")

  Returns { status, slot, validUntil, validDays, resumed, total, admitted }:
    status ADMITTED (slot 0 for a policy without a quantity; resumed 1 when this request was
    already admitted by an earlier run; total the policy's quantity or ''; admitted the policy's
    admissions counting this one, 0 when resumed: how close the policy is to selling out),
    a refusal code (POLICY_NOT_FOUND, POLICY_NOT_ACTIVE, METHOD_NOT_SUPPORTED, OUTSIDE_ISSUE_WINDOW,
    USER_LIMIT_REACHED, SOLD_OUT), or META_MISSING / STOCK_MISSING when the caller must load that
    state from Postgres first.
]]
local prior = redis.call('HGET', KEYS[5], ARGV[1])
local meta = redis.call('HMGET', KEYS[1], 'status', 'method', 'startsAt', 'endsAt', 'total', 'perUser', 'validUntil', 'validDays')
if prior then
  return { 'ADMITTED', tonumber(string.match(prior, '^(%d+)')), meta[7] or '', meta[8] or '', 1, meta[5] or '', 0 }
end
if not meta[1] then return { 'META_MISSING', 0, '', '' } end
if meta[1] == 'MISSING' then return { 'POLICY_NOT_FOUND', 0, '', '' } end
if redis.call('EXISTS', KEYS[2]) == 0 then return { 'STOCK_MISSING', 0, '', '' } end
if not string.find(',' .. ARGV[3] .. ',', ',' .. meta[2] .. ',', 1, true) then
  return { 'METHOD_NOT_SUPPORTED', 0, '', '' }
end
if meta[1] ~= 'ACTIVE' then return { 'POLICY_NOT_ACTIVE', 0, '', '' } end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now < tonumber(meta[3]) or (meta[4] ~= '' and now >= tonumber(meta[4])) then
  return { 'OUTSIDE_ISSUE_WINDOW', 0, '', '' }
end

local held = tonumber(redis.call('HGET', KEYS[4], ARGV[2]) or '0')
if held >= tonumber(meta[6]) then return { 'USER_LIMIT_REACHED', 0, '', '' } end

local slot = 0
if meta[5] ~= '' then
  local freed = redis.call('LPOP', KEYS[3])
  if freed then
    slot = tonumber(freed)
  else
    local nextSlot = tonumber(redis.call('HGET', KEYS[2], 'next'))
    if nextSlot > tonumber(meta[5]) then return { 'SOLD_OUT', 0, '', '', 0, meta[5] } end
    slot = nextSlot
    redis.call('HSET', KEYS[2], 'next', nextSlot + 1)
  end
end

redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
local admitted = redis.call('HINCRBY', KEYS[2], 'issued', 1)
redis.call('HSET', KEYS[5], ARGV[1], slot .. '|' .. ARGV[2] .. '|' .. now)
return { 'ADMITTED', slot, meta[7], meta[8], 0, meta[5], admitted }
