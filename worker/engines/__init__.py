"""Model runtimes behind one small protocol: load, tokenize, generate, close.

`protocol` (the Engine protocol and its errors), `decoding` and `stops` (generation rules both
engines share), `llama` and `llama_batch` (GGUF through llama-cpp-python), `llama_cpu` (how
llama.cpp must be loaded on this CPU), `mlx` (MLX folders through mlx-lm), `available` (which
engines this host can run). Engines never know about Redis. Importing this package imports
neither llama.cpp nor mlx: the engine modules do, when a model is loaded.
"""
