"""Which slot a new llama.cpp sequence takes, and how much of its prompt is already in KV cells.

A slot keeps the cells of its last sequence after it ends. A new prompt takes the free slot
whose cells share the longest prefix with it and evaluates only the rest; when another slot
(busy or free) shares a prefix longer by enough to pay for it, its whole stream is copied first
(llama.cpp copies across streams only whole); when a prompt kept in host memory shares more
than any slot, its cells are copied back (kept_prompts.py). Whatever a slot held that is about
to be cut is kept there first.
"""

from __future__ import annotations

import ctypes
import itertools
from dataclasses import dataclass, field
from typing import Any

from .kept_prompts import Kept, KeptPrompts, common_prefix

# Copying another slot's KV stream costs about as much as evaluating 1/COPY_RATIO of its
# cells would; a donor must share at least that many more prompt tokens than the target.
COPY_RATIO = 64
# A kept prompt is copied back whenever it holds more of the prompt than any slot does, as
# llama-server restores from its prompt cache: copying 160 tokens' cells back takes about 0.35 ms
# (SmolLM2-135M, 2 cores), while evaluating even one prompt token in a batch takes about 2.6 ms.


@dataclass
class Slot:
    """One llama.cpp sequence id and the tokens its KV cells hold (positions 0..n-1)."""

    index: int
    history: list[int] = field(default_factory=list)
    busy: object | None = None  # the sequence running in it
    last_used: int = 0


class SlotCache:
    def __init__(self, lib: Any, ctx: Any, mem: Any, n_slots: int, n_ctx: int, unified: bool, kept_budget: int) -> None:
        self._lib, self._ctx, self._mem = lib, ctx, mem
        self.n_ctx = n_ctx
        self._unified = unified
        self.slots = [Slot(i) for i in range(n_slots)]
        self.kept = KeptPrompts(kept_budget)
        self._clock = itertools.count(1)

    @property
    def free_slots(self) -> int:
        return sum(1 for slot in self.slots if slot.busy is None)

    def take(self, tokens: list[int]) -> tuple[Slot, int]:
        """A free slot holding the longest prefix of tokens it can get, and that prefix's length.

        Raises RuntimeError when every slot is busy."""
        slot, shared = self._pick_slot(tokens)
        cached = self._reuse_prefix(slot, tokens, shared)
        slot.last_used = next(self._clock)
        return slot, cached

    def release(self, slot: Slot) -> None:
        """The slot's sequence ended; its cells stay as prompt cache."""
        slot.busy = None
        slot.last_used = next(self._clock)

    def close(self) -> None:
        self.kept.clear()

    def _pick_slot(self, tokens: list[int]) -> tuple[Slot, list[int]]:
        """The free slot to use, and how long a prefix of tokens each slot's cells hold."""
        free = [slot for slot in self.slots if slot.busy is None]
        if not free:
            raise RuntimeError(f"all {len(self.slots)} slots are busy")
        shared = [common_prefix(slot.history, tokens) for slot in self.slots]
        # The longest kept prefix wins; among equals the least recently used gives up its cache.
        return max(free, key=lambda slot: (shared[slot.index], -slot.last_used)), shared

    def _reuse_prefix(self, slot: Slot, tokens: list[int], shared: list[int]) -> int:
        """Leaves in slot's KV cells the longest prefix of tokens available; returns its length.

        The prefix comes from the slot itself, from another slot's cells, or from a prompt kept
        in host memory (kept_prompts.py); whatever the slot held that is about to be cut is kept
        there first."""
        lib, mem = self._lib, self._mem
        own = shared[slot.index]
        donor = max(self.slots, key=lambda other: shared[other.index])
        # Copying across streams moves a whole stream: worth it for a long enough gain only.
        gain = 0 if self._unified else self.n_ctx // COPY_RATIO
        kept, stored = self.kept.best(tokens)
        if kept is not None and stored > max(own, shared[donor.index]):
            self._keep(slot)
            lib.llama_memory_seq_rm(mem, slot.index, -1, -1)
            slot.history = []
            own = 0
            if self._restore(kept, slot):
                own = stored
        elif donor is not slot and shared[donor.index] > own + gain:
            self._keep(slot)
            own = shared[donor.index]
            lib.llama_memory_seq_rm(mem, slot.index, -1, -1)
            if self._unified:
                lib.llama_memory_seq_cp(mem, donor.index, slot.index, 0, own)
            else:
                lib.llama_memory_seq_cp(mem, donor.index, slot.index, -1, -1)
            slot.history = donor.history[:own]
        elif own < len(slot.history):
            self._keep(slot)
        # At least the last prompt token is evaluated: its logits give the first token.
        keep = min(own, len(tokens) - 1)
        if keep > 0 and lib.llama_memory_seq_pos_min(mem, slot.index) > 0:
            keep = 0  # a sliding-window cache dropped the start
        if not lib.llama_memory_seq_rm(mem, slot.index, keep, -1):
            keep = 0  # this memory cannot drop part of a sequence (recurrent models)
            lib.llama_memory_seq_rm(mem, slot.index, -1, -1)
        del slot.history[keep:]
        return keep

    def _keep(self, slot: Slot) -> None:
        """Saves the sequence in slot's cells to the kept prompts, unless it is kept already."""
        history = slot.history
        if not history or self.kept.budget_bytes == 0 or self.kept.holds(history):
            return
        size = int(self._lib.llama_state_seq_get_size(self._ctx, slot.index))
        if size == 0 or size > self.kept.budget_bytes:
            return
        buffer = (ctypes.c_ubyte * size)()
        written = int(self._lib.llama_state_seq_get_data(self._ctx, buffer, size, slot.index))
        if written:
            self.kept.keep(list(history), bytes(buffer)[:written])

    def _restore(self, kept: Kept, slot: Slot) -> bool:
        """Copies a kept prompt's cells into slot (emptied first); False where llama.cpp refused."""
        source = ctypes.cast(ctypes.c_char_p(kept.state), ctypes.POINTER(ctypes.c_ubyte))
        if not self._lib.llama_state_seq_set_data(self._ctx, source, len(kept.state), slot.index):
            self._lib.llama_memory_seq_rm(self._mem, slot.index, -1, -1)
            return False
        slot.history = list(kept.tokens)
        self.kept.touch(kept)
        return True
