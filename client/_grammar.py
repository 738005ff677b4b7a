"""Structured output: a JSON schema as a GBNF grammar, and a grammar checked before it is queued.

Both are llama.cpp's own: the conversion is llama-cpp-python's port of llama.cpp's
json_schema_to_grammar, the check is llama.cpp's grammar parser (run without a model: only
`<[token]>` references need a vocabulary). So a request that passes here is one a worker
accepts, and the message of one that does not is llama.cpp's. Both need llama-cpp-python, which
`pip install hostler` does not bring: a client without it checks nothing here, and the worker
(which always has it for GGUF models) fails such a job with invalid_request and the same message.
The worker converts a schema itself, with its own llama.cpp: the grammar it samples with is then
always one its parser was written for.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from functools import cache
from typing import Any

from hostler.schemas import SamplingParams

__all__ = ["GrammarError", "check_structured", "grammar_of", "grammar_sampler", "llama_available", "schema_grammar"]

ROOT_RULE = "root"
# llama.cpp's parser reports its first problem on one line after this.
_PARSE_ERROR = re.compile(r"error parsing grammar: (.+)")
_OTHER_ERRORS = re.compile(r"(grammar does not contain a .+ symbol|left recursion detected.*|Undefined rule.*)")
# llama-cpp-python's logger, whose level its llama.cpp log callback obeys (llama_cpp._logger).
_LLAMA_LOGGER = "llama-cpp-python"
_STDERR_LOCK = threading.Lock()
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


class GrammarError(ValueError):
    """A JSON schema llama.cpp's converter cannot turn into a grammar, or a grammar its parser refuses."""


@cache
def llama_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def check_structured(params: SamplingParams) -> None:
    """Raises GrammarError when params' json_schema or grammar would fail in a worker; checks
    nothing where llama-cpp-python is not installed (the worker checks again either way)."""
    grammar = grammar_of(params) if llama_available() else None
    if grammar is not None:
        import llama_cpp

        lib: Any = llama_cpp
        lib.llama_sampler_free(grammar_sampler(grammar, where=_where(params)))


def grammar_of(params: SamplingParams) -> str | None:
    """The GBNF a job samples with: its grammar, or its JSON schema converted; None for neither."""
    if params.json_schema is not None:
        return schema_grammar(params.json_schema)
    return params.grammar


def _where(params: SamplingParams) -> str:
    return "json_schema (as converted to a grammar)" if params.json_schema is not None else "grammar"


def schema_grammar(schema: dict[str, Any]) -> str:
    """schema as GBNF, by llama.cpp's converter."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # deferred: the client runs without it

    try:
        text = json.dumps(schema)
    except (TypeError, ValueError) as exc:
        raise GrammarError(f"json_schema is not JSON: {exc}") from None
    try:
        grammar: str = json_schema_to_gbnf(text)
    except RecursionError:
        raise GrammarError("json_schema nests too deeply for llama.cpp's converter") from None
    except Exception as exc:  # noqa: BLE001 - the converter raises whatever its code meets
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise GrammarError(f"json_schema: llama.cpp's converter cannot handle this schema ({detail})") from None
    # llama-cpp-python's port lets control characters into strings, which JSON forbids (a parser
    # refuses a raw newline in a string); llama.cpp's own converter keeps them out, and so do we.
    return grammar.replace(_LOOSE_CHAR, _JSON_CHAR)


def grammar_sampler(grammar: str, *, vocab: Any = None, where: str = "grammar") -> Any:
    """llama.cpp's grammar sampler (a `llama_sampler *` the caller frees) for grammar, over a model's
    vocabulary (None: parse only). GrammarError says what llama.cpp's parser refused."""
    import llama_cpp  # deferred: the client runs without it

    lib: Any = llama_cpp
    if "\x00" in grammar:
        raise GrammarError(f"invalid {where}: it holds a NUL character")
    with _stderr_captured() as captured:
        sampler = lib.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), ROOT_RULE.encode())
    if sampler:
        return sampler
    said = captured()
    found = _PARSE_ERROR.search(said) or _OTHER_ERRORS.search(said)
    reason = found.group(1).strip() if found is not None else "llama.cpp's grammar parser refused it"
    raise GrammarError(f"invalid {where}: {reason} (GBNF: https://github.com/ggml-org/llama.cpp/tree/master/grammars)")


@contextlib.contextmanager
def _stderr_captured() -> Iterator[Any]:
    """What is written meanwhile to file descriptor 2 and to sys.stderr: llama.cpp's parser prints
    its reason to the one, its log (through llama-cpp-python's callback) goes to the other, and
    the call itself returns only NULL. Serialised, since both are the process's.

    The callback drops what is below its logger's level, and a quiet model load (a worker's)
    leaves that at ERROR, where the reasons llama.cpp logs line by line ("does not contain a
    'root' symbol", "left recursion") are lost: every level passes while capturing."""
    callback_log = logging.getLogger(_LLAMA_LOGGER)
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        saved, saved_stream, saved_level = os.dup(2), sys.stderr, callback_log.level
        logged = io.StringIO()
        text = ""
        try:
            os.dup2(sink.fileno(), 2)
            sys.stderr = logged
            callback_log.setLevel(logging.DEBUG)
            yield lambda: text
        finally:
            callback_log.setLevel(saved_level)
            sys.stderr = saved_stream
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        text = sink.read(64 * 1024).decode("utf-8", errors="replace") + logged.getvalue()
