"""The control plane: who runs what, and what happens when something dies.

`controller` (the leader that places models), `snapshot` (the cluster it reads each step, as
the policy sees it) and `placement` (its pure policy), `host_agent` (one per machine: starts
and stops workers to match assignments), `janitor` (queued jobs nobody waits for, jobs of
dead workers), `endings` (ending a job that someone else may also end, shared by the three).
When a missing heartbeat means a dead process is `hostler.worker.outage`'s to say.
"""
