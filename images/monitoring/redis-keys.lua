-- The few keys the monitoring reads from Redis, run by the Redis exporter (--script) as the
-- `monitor` user: Redis applies that user's ACL to every command here, so the script can read
-- these keys and nothing else. A script instead of --check-single-keys: Debian's exporter
-- (1.69) drops every key listed after one that does not exist, and an empty queue does not.
-- Each pair is exported as redis_script_values{key="<name>"}.
local queues = {default = "trinity.tasks", cpu = "trinity.tasks.cpu", io = "trinity.tasks.io",
                beat = "trinity.tasks.beat"}  -- the default names (config/celery_settings.py)
local out = {}
for kind, name in pairs(queues) do
  out[#out + 1] = "queue:" .. kind
  out[#out + 1] = tostring(redis.call("LLEN", name))
end
-- RedBeat's lock: held (1) while a beat runs and renews it.
out[#out + 1] = "beat_lock_held"
out[#out + 1] = tostring(redis.call("EXISTS", "trinity.redbeat::lock"))
-- Unix time of the last verified backup (scripts/backup.py or the backup service); absent
-- until the first one.
local last = redis.call("GET", "trinity.backup.last_success")
if last then
  out[#out + 1] = "backup_last_success"
  out[#out + 1] = last
end
return out
