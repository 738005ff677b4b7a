"""A worker's taken list: the job ids it moved off its model's queues and has not started.

Per worker, not rq's shared intermediate list: replicas on several hosts share a queue, and
only a dead worker's own ids may go back on it. `TAKE` (run by the JobStore) moves the next
id into the list; `requeue_taken` puts a list's ids back at the head of their queues, for a
worker that exits with one taken and for whoever ends the jobs of a dead worker
(control.endings).
"""

from __future__ import annotations

import redis
from hostler.schemas import Keys
from rq.job import Job as RqJob
from rq.queue import Queue

__all__ = ["TAKE", "requeue_taken"]

# Takes the next job id, interactive before batch, into the worker's taken list. With
# nothing waiting it clears the bell, so that the next enqueue's ring wakes an idle worker;
# a ring left from jobs another worker already took would only cost an empty look.
# An id already in the taken list is answered instead of taking another: the list holds at
# most the one id a worker took and has not started, so an id there is one whose take
# reply was lost (redis-py replays the call after a reconnect, and a worker that gave up
# takes again). Taking more would strand it until the worker died.
# KEYS: queues in priority order..., taken list, bell. ARGV: rq job key prefix, queue names in
# the same order. Returns {index of the queue, id} or nil.
TAKE = """
local n = #KEYS - 2
local held = redis.call('LINDEX', KEYS[n + 1], 0)
if held then
  local origin = redis.call('HGET', ARGV[1] .. held, 'origin')
  for i = 1, n do
    if ARGV[i + 1] == origin then return {i, held} end
  end
  return {1, held}
end
for i = 1, n do
  local id = redis.call('LMOVE', KEYS[i], KEYS[n + 1], 'LEFT', 'RIGHT')
  if id then return {i, id} end
end
redis.call('DEL', KEYS[n + 2])
return nil
"""

# A worker's taken ids back to the front of the queue each came from, newest first so
# that the oldest ends up at the head. One script, so two janitors cannot both push an id.
# KEYS: taken list, bell. ARGV: rq job key prefix, rq queue key prefix, default queue name.
_REQUEUE = """
local n = 0
while true do
  local id = redis.call('RPOP', KEYS[1])
  if not id then break end
  local origin = redis.call('HGET', ARGV[1] .. id, 'origin')
  redis.call('LPUSH', ARGV[2] .. (origin or ARGV[3]), id)
  n = n + 1
end
if n > 0 then
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('PUBLISH', KEYS[2], '1')
end
return n
"""


def requeue_taken(connection: redis.Redis, keys: Keys, model: str, worker_name: str) -> int:
    """Puts a dead worker's taken-but-not-started jobs back at the front of their queues, in order."""
    return int(
        connection.eval(
            _REQUEUE,
            2,
            keys.taken(model, worker_name),
            keys.bell(model),
            RqJob.redis_job_namespace_prefix,
            Queue.redis_queue_namespace_prefix,
            keys.queue_name(model),
        )
    )
