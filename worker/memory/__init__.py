"""How much memory a model needs, computed from its files without loading it.

`estimate` (the policy: weights + KV cache + compute buffer + the worker process), `gguf` and
`safetensors` (readers of the facts the policy needs from each format), `files` (what a model
file is: GGUF's magic bytes, what makes an MLX folder; asked by the registry, the store,
pulls and the engines too).
"""
