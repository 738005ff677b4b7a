"""Summaries' text handling on its own: splitting a document into units and packing them into chunks."""

from __future__ import annotations

from hostler.client.summarize import pack, split_units


def test_pack_and_split_keep_every_word() -> None:
    units, separator = split_units("One. Two three.\n\nFour five six.\n\nSeven.")
    assert units == ["One. Two three.", "Four five six.", "Seven."] and separator == "\n\n"
    assert pack(units, [3, 3, 1], 4, separator) == ["One. Two three.", "Four five six.\n\nSeven."]
    assert split_units("Alpha beta. Gamma.")[0] == ["Alpha beta.", "Gamma."]
    assert split_units("a b c d")[0] == ["a b", "c d"]
    assert split_units("word")[0] == ["word"]
