--[[
  set-meta.lua: replaces the cached copy of a policy unless a newer version is already there,
  so a worker that read Postgres before an admin's change cannot overwrite that change.

  KEYS[1] meta hash
  ARGV[1] version of the policy row being written
  ARGV[2] time to live in milliseconds
  ARGV[3..] field, value, field, value, ...

  Returns 1 when written, 0 when a newer version was kept.
]]
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', ARGV[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
