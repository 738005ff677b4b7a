"""Every Redis key and channel hostler uses, built in one place, and `as_text`, the one way a
name read back from Redis (a member, a list entry, a hash field) becomes a str.

rq's own keys (rq:queue:*, rq:job:*, registries) stay rq's so that `rq info` and
rq-dashboard work on hostler queues; hostler only chooses the queue *names*.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "hostler:"


def as_text(value: object) -> str:
    """A value read back from Redis as text: redis-py answers bytes, or str when its connection
    decodes responses (NVML answers either too)."""
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    def queue_name(self, model: str, priority: str = "interactive") -> str:
        """The rq queue name of a model's priority class (rq stores it at rq:queue:<name>).

        Interactive jobs keep the plain name; batch jobs get a suffix no model id can contain.
        """
        base = f"{self.prefix}{model}"
        return base if priority == "interactive" else f"{base}:{priority}"

    def model_of_queue(self, queue_name: str) -> str | None:
        if queue_name.startswith(self.prefix):
            return queue_name[len(self.prefix) :].split(":", 1)[0]
        return None

    def bell(self, model: str) -> str:
        """List an idle worker blocks on, and channel a busy one listens to: every enqueue pushes to
        the one and publishes on the other (a worker takes from either class)."""
        return f"{self.prefix}bell:{model}"

    def waiting(self, job_id: str) -> str:
        """Exists (with a short TTL the client renews) while a client waits for the job."""
        return f"{self.prefix}waiting:{job_id}"

    def start_by(self, job_id: str) -> str:
        """Expires at the job's start deadline; a job started after that is expired instead."""
        return f"{self.prefix}start-by:{job_id}"

    @property
    def leases(self) -> str:
        """Hash job id -> Lease JSON: queued jobs with a waiting key or start deadline to watch."""
        return f"{self.prefix}leases"

    @property
    def max_queue(self) -> str:
        """Hash model id (or '*') -> most waiting jobs its queue takes."""
        return f"{self.prefix}max-queue"

    def reaped(self, job_id: str) -> str:
        """Held briefly by whoever ends a job it does not own, so it is ended once."""
        return f"{self.prefix}reaped:{job_id}"

    def channel(self, job_id: str) -> str:
        """Pub/sub channel of a job's stream events."""
        return f"{self.prefix}events:{job_id}"

    @property
    def hosts(self) -> str:
        """Set of host ids that have announced themselves."""
        return f"{self.prefix}hosts"

    def host(self, host_id: str) -> str:
        """A host's state (HostState JSON, with a TTL): its live figures and its catalog's digest."""
        return f"{self.prefix}host:{host_id}"

    def host_catalog(self, host_id: str) -> str:
        """A host's catalog (HostCatalog JSON, with a TTL): its models on disk and hardware.

        Not under `host:`, so that a pattern over the states (`host:*`) matches states only."""
        return f"{self.prefix}host-catalog:{host_id}"

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

    def assignments(self, host_id: str) -> str:
        """Hash model -> Assignment JSON: the workers the controller wants on a host."""
        return f"{self.prefix}assign:{host_id}"

    def wake(self, host_id: str) -> str:
        """List a host agent blocks on, so a new assignment starts its worker at once."""
        return f"{self.prefix}wake:{host_id}"

    def spec(self, model: str) -> str:
        """A model's ModelSpec (replicas, keep_alive, pinned), written by client.load."""
        return f"{self.prefix}spec:{model}"

    @property
    def controller(self) -> str:
        """The controller leader lock: holds the leader's id, with an expiry."""
        return f"{self.prefix}controller"

    @property
    def view(self) -> str:
        """Hash host -> HostStatus JSON, with a TTL: each host as the leading controller counts
        it (free memory, placed models)."""
        return f"{self.prefix}view"

    def taken(self, model: str, worker_name: str) -> str:
        """Job ids a worker has taken off the queue but not yet started (requeued if it dies)."""
        return f"{self.prefix}taken:{model}:{worker_name}"

    def batch(self, batch_id: str) -> str:
        """Hash of one batch run: its input, line count and when it started."""
        return f"{self.prefix}batch:{batch_id}"

    def batch_jobs(self, batch_id: str) -> str:
        """Hash custom_id -> job id of a batch run's jobs, for `hostler batch status`."""
        return f"{self.prefix}batch:{batch_id}:jobs"

    # -- the Batch API over HTTP (the gateway's /v1/files and /v1/batches) --------------

    @property
    def files(self) -> str:
        """Sorted set of uploaded file ids by upload time: how many there are, newest first."""
        return f"{self.prefix}files"

    @property
    def files_bytes(self) -> str:
        """The bytes all uploaded files hold together (their limit is checked against it)."""
        return f"{self.prefix}files:bytes"

    def file(self, file_id: str) -> str:
        """Hash of one file: `meta` (FileObject JSON) and `content` (its bytes)."""
        return f"{self.prefix}file:{file_id}"

    @property
    def api_batches(self) -> str:
        """Sorted set of Batch API batch ids by creation time, for GET /v1/batches."""
        return f"{self.prefix}openai-batches"

    @property
    def api_batches_active(self) -> str:
        """Set of batch ids not yet in a final state: what the gateways' runners take leases on."""
        return f"{self.prefix}openai-batches:active"

    def api_batch(self, batch_id: str) -> str:
        """A Batch API batch: its BatchObject JSON."""
        return f"{self.prefix}openai-batch:{batch_id}"

    def api_batch_lease(self, batch_id: str) -> str:
        """Holds the id of the gateway running the batch, with a TTL that gateway renews."""
        return f"{self.prefix}openai-batch:{batch_id}:lease"

    def api_batch_output(self, batch_id: str) -> str:
        """Hash custom_id -> output line of the requests that succeeded (each custom_id once)."""
        return f"{self.prefix}openai-batch:{batch_id}:output"

    def api_batch_errors(self, batch_id: str) -> str:
        """Hash `id:<custom_id>` or `line:<n>` -> error line of the requests that failed or could not run."""
        return f"{self.prefix}openai-batch:{batch_id}:errors"

    def api_batch_usage(self, batch_id: str) -> str:
        """Hash of token counters (input, output) of a batch's requests that ran."""
        return f"{self.prefix}openai-batch:{batch_id}:usage"

    def load_params(self, model: str) -> str:
        """The params of the last successful load; a restarted worker loads with them."""
        return f"{self.prefix}load-params:{model}"

    def metrics(self, model: str) -> str:
        """Hash of a model's job metrics (counters and histogram buckets), written as jobs end."""
        return f"{self.prefix}metrics:{model}"

    @property
    def metric_models(self) -> str:
        """Set of model ids that have a metrics hash."""
        return f"{self.prefix}metrics-models"

    def pulls(self, host_id: str) -> str:
        """List of PullRequest JSON a host agent takes and downloads (client.pull)."""
        return f"{self.prefix}pulls:{host_id}"

    def pull_channel(self, pull_id: str) -> str:
        """Pub/sub channel of a pull's progress, done and error events."""
        return f"{self.prefix}pull:{pull_id}"

    def pull_state(self, pull_id: str) -> str:
        """A pull's latest event (JSON, with a TTL), for a client that missed a message."""
        return f"{self.prefix}pull-state:{pull_id}"
