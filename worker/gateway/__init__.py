"""The OpenAI-compatible HTTP gateway: just another client of the queues.

`hostler gateway` serves /v1/chat/completions, /v1/completions, /v1/models, model
load/unload, /v1/tokenize, /management/processes, /health and /metrics with FastAPI on
uvicorn, through one AsyncClient. Any number of gateways may stand in front of one Redis:
they keep no state of their own. FastAPI, uvicorn and prometheus-client (the `gateway`
extra) are imported only by the modules that need them, never by `import hostler`.

Modules: `settings` (what the command line sets), `shapes` (OpenAI request models and
stream chunks), `errors` (hostler errors as HTTP statuses in OpenAI's error shape),
`guards` (API keys, body size), `sse` (server-sent events, disconnects), `completions` (the
two generation endpoints), `management` (models, load/unload, tokenize, processes, health,
metrics), `metrics_render` (Prometheus text from Redis), `app` (routes), `server` (uvicorn),
`openapi` (the OpenAPI document: bodies, answers, error statuses of every route), and the Batch
API over HTTP: `batch_api` (its parts put together), `files`, `batches`, `batch_store` (files
and batches in Redis), `batch_runner` (one batch on the queue), `batch_leases` (takeover).
"""
