"""One model's worker process: the loop that serves its queue, and its Redis bookkeeping.

`worker` (ModelWorker: take, check, run and end jobs), `jobstore` (the take, the claim and
every write that ends a job the worker ran), `taken` (the worker's taken list: the take's
script, and giving taken ids back), `events` (token events pipelined to the job's
channel), `metrics` (per-model counters written with each job's end).
"""
