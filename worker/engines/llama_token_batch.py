"""One llama_batch over ctypes arrays it owns, reused step after step.

Filling it with slice assignments keeps the per-token work in C loops: a Python loop over
llama-cpp-python's own batch helper would cost more than the decode of a small model.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any, Literal

Outputs = Literal["last", "all", "none"]


class TokenBatch:
    def __init__(self, lib: Any, capacity: int, n_seqs: int) -> None:
        self.capacity = capacity
        # Any: typeshed's Array takes only lists in slice assignments; ctypes takes any sequence.
        self.token: Any = (ctypes.c_int32 * capacity)()
        self.pos: Any = (ctypes.c_int32 * capacity)()
        self.n_seq_id = (ctypes.c_int32 * capacity)(*([1] * capacity))
        self.seq_ids = (ctypes.c_int32 * n_seqs)(*range(n_seqs))
        self.seq_id: Any = (ctypes.c_void_p * capacity)()
        self.logits: Any = (ctypes.c_int8 * capacity)()
        base = ctypes.addressof(self.seq_ids)
        self.seq_addr = [base + ctypes.sizeof(ctypes.c_int32) * s for s in range(n_seqs)]
        struct = lib.llama_batch()
        struct.n_tokens = 0
        struct.token = ctypes.cast(self.token, ctypes.POINTER(ctypes.c_int32))
        struct.embd = None
        struct.pos = ctypes.cast(self.pos, ctypes.POINTER(ctypes.c_int32))
        struct.n_seq_id = ctypes.cast(self.n_seq_id, ctypes.POINTER(ctypes.c_int32))
        struct.seq_id = ctypes.cast(self.seq_id, ctypes.POINTER(ctypes.POINTER(ctypes.c_int32)))
        struct.logits = ctypes.cast(self.logits, ctypes.POINTER(ctypes.c_int8))
        self.struct = struct
        self.n = 0

    def clear(self) -> None:
        self.n = 0
        self.struct.n_tokens = 0

    def add(self, tokens: Sequence[int], pos: int, seq: int, outputs: Outputs) -> int:
        """Appends a run of one sequence's tokens at positions pos..; returns the batch index of
        its last token. outputs: which of them llama_decode computes an output (logits or an
        embedding) for."""
        n, k = self.n, len(tokens)
        end = n + k
        self.token[n:end] = tokens
        self.pos[n:end] = range(pos, pos + k)
        self.seq_id[n:end] = [self.seq_addr[seq]] * k
        self.logits[n:end] = [1 if outputs == "all" else 0] * k
        if outputs == "last":
            self.logits[end - 1] = 1
        self.n = end
        self.struct.n_tokens = end
        return end - 1
