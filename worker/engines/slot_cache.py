"""Which slot a new llama.cpp sequence takes, and how much of its prompt is already in KV cells.

A slot keeps the cells of its last sequence after it ends. A new prompt takes the free slot
whose cells share the longest prefix with it and evaluates only the rest; when another slot
(busy or free) shares a prefix longer by enough to pay for it, its cells are copied first (as
a saved sequence state: llama.cpp's own copy across streams moves every cell of a stream's
context); when a prompt kept in host memory shares more
than any slot, its cells are copied back (kept_prompts.py). Whatever a slot held that is about
to be cut is kept there first. Busy slots are kept consecutive (slot_packing.py says why): among
free slots sharing as much, a new sequence takes one that keeps them so, and pack() moves
sequences into the gaps that ended ones leave.
"""

from __future__ import annotations

import ctypes
import itertools
from dataclasses import dataclass, field
from typing import Any

from .kept_prompts import Kept, KeptPrompts, common_prefix
from .slot_packing import one_run, packing_moves

# Copying a slot's cells into another (llama_state_seq_get_data + set_data) took 0.6 ms for 160
# tokens on SmolLM2-135M with 2 CPU cores, where evaluating them took 400 ms; a GPU evaluates far
# faster while the copy goes through host memory. A donor must share more prompt tokens than the
# target by 1/COPY_RATIO of the cells it holds.
COPY_RATIO = 16
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

    def pack(self) -> list[Slot]:
        """Moves busy sequences into the gaps between busy slots (split KV only); returns the
        slots that received one, each with its sequence in `busy`."""
        if self._unified:
            return []
        busy = [slot.index for slot in self.slots if slot.busy is not None]
        moved = []
        for source, target in packing_moves(busy, len(self.slots), lambda i: len(self.slots[i].history)):
            if not self._move(self.slots[source], self.slots[target]):
                break
            moved.append(self.slots[target])
        return moved

    def _pick_slot(self, tokens: list[int]) -> tuple[Slot, list[int]]:
        """The free slot to use, and how long a prefix of tokens each slot's cells hold."""
        free = [slot for slot in self.slots if slot.busy is None]
        if not free:
            raise RuntimeError(f"all {len(self.slots)} slots are busy")
        shared = [common_prefix(slot.history, tokens) for slot in self.slots]
        busy = [slot.index for slot in self.slots if slot.busy is not None]
        # The longest kept prefix wins; among equals one that keeps the busy slots consecutive,
        # then the least recently used gives up its cache.
        return max(free, key=lambda slot: (shared[slot.index], one_run([*busy, slot.index]), -slot.last_used)), shared

    def _reuse_prefix(self, slot: Slot, tokens: list[int], shared: list[int]) -> int:
        """Leaves in slot's KV cells the longest prefix of tokens available; returns its length.

        The prefix comes from the slot itself, from another slot's cells, or from a prompt kept
        in host memory (kept_prompts.py); whatever the slot held that is about to be cut is kept
        there first."""
        lib, mem = self._lib, self._mem
        own = shared[slot.index]
        donor = max(self.slots, key=lambda other: shared[other.index])
        # In one stream a copy only marks cells; across streams it copies them.
        gain = 0 if self._unified else len(donor.history) // COPY_RATIO
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
            if self._unified:
                lib.llama_memory_seq_rm(mem, slot.index, -1, -1)
                lib.llama_memory_seq_cp(mem, donor.index, slot.index, 0, own)
                slot.history = donor.history[:own]
            elif not self._copy(donor, slot):
                own = 0
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

    def _move(self, source: Slot, target: Slot) -> bool:
        """Moves source's sequence into the free target (whose cells are kept first); source keeps
        a copy of its cells as prompt cache. False, with source untouched, where llama.cpp refused."""
        self._keep(target)
        if not self._copy(source, target):
            return False
        target.busy, source.busy = source.busy, None
        target.last_used = source.last_used = next(self._clock)
        return True

    def _copy(self, source: Slot, target: Slot) -> bool:
        """Replaces target's cells with a copy of source's (split streams: copying a whole stream
        would move every cell of its context); False, target emptied, where llama.cpp refused."""
        lib, mem = self._lib, self._mem
        lib.llama_memory_seq_rm(mem, target.index, -1, -1)
        target.history = []
        size = int(lib.llama_state_seq_get_size(self._ctx, source.index))
        buffer = (ctypes.c_ubyte * size)()
        written = int(lib.llama_state_seq_get_data(self._ctx, buffer, size, source.index)) if size else 0
        if not written or int(lib.llama_state_seq_set_data(self._ctx, buffer, written, target.index)) != written:
            lib.llama_memory_seq_rm(mem, target.index, -1, -1)
            return False
        target.history = list(source.history)
        return True

    def _restore(self, kept: Kept, slot: Slot) -> bool:
        """Copies a kept prompt's cells into slot (emptied first); False where llama.cpp refused."""
        source = ctypes.cast(ctypes.c_char_p(kept.state), ctypes.POINTER(ctypes.c_ubyte))
        if not self._lib.llama_state_seq_set_data(self._ctx, source, len(kept.state), slot.index):
            self._lib.llama_memory_seq_rm(self._mem, slot.index, -1, -1)
            return False
        slot.history = list(kept.tokens)
        self.kept.touch(kept)
        return True
