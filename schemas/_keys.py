"""Every Redis key and channel hostler uses, built in one place.

rq's own keys (rq:queue:*, rq:job:*, registries) stay rq's so that `rq info` and
rq-dashboard work on hostler queues; hostler only chooses the queue *names*.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "hostler:"


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    def queue_name(self, model: str) -> str:
        """The rq queue name of a model (rq stores it at rq:queue:<name>)."""
        return f"{self.prefix}{model}"

    def model_of_queue(self, queue_name: str) -> str | None:
        if queue_name.startswith(self.prefix):
            return queue_name[len(self.prefix) :]
        return None

    def channel(self, job_id: str) -> str:
        """Pub/sub channel of a job's stream events."""
        return f"{self.prefix}events:{job_id}"

    @property
    def hosts(self) -> str:
        """Set of host ids that have announced themselves."""
        return f"{self.prefix}hosts"

    def host(self, host_id: str) -> str:
        """A host's report (JSON, with a TTL)."""
        return f"{self.prefix}host:{host_id}"

    @property
    def workers(self) -> str:
        """Set of hostler worker names (the reports expire; the set is pruned by readers)."""
        return f"{self.prefix}workers"

    def worker(self, name: str) -> str:
        """A worker's report (JSON, with a TTL)."""
        return f"{self.prefix}worker:{name}"

    def alive(self, model: str) -> str:
        """Exists while at least one worker of the model heartbeats."""
        return f"{self.prefix}alive:{model}"

    @property
    def demand(self) -> str:
        """List of model ids that have waiting jobs and no live worker."""
        return f"{self.prefix}demand"

    def load_params(self, model: str) -> str:
        """The params of the last successful load; a restarted worker loads with them."""
        return f"{self.prefix}load-params:{model}"
