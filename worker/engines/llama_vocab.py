"""The bytes each token of a llama.cpp vocabulary stands for, and whether it ends generation."""

from __future__ import annotations

import ctypes
from typing import Any


class VocabPieces:
    """Token -> (ends generation, its bytes), asked of llama.cpp once per token and kept.

    A generation asks for every token it samples; the vocabulary never changes under a loaded
    model, so the answer is cached for the model's life (at most one entry per vocabulary token).
    """

    def __init__(self, lib: Any, vocab: Any, bos: int) -> None:
        self._lib = lib
        self._vocab = vocab
        self._bos = bos
        self._known: dict[int, tuple[bool, bytes]] = {}
        self._buf = ctypes.create_string_buffer(256)

    def info(self, token: int) -> tuple[bool, bytes]:
        known = self._known.get(token)
        if known is None:
            lib, buf = self._lib, self._buf
            n = lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            data = buf.raw[:n]
            if token == self._bos and data.startswith(b" "):
                data = data[1:]  # as llama-cpp-python's detokenize([token])
            known = (bool(lib.llama_vocab_is_eog(self._vocab, token)), data)
            self._known[token] = known
        return known
