"""Structured output checked before anything is queued: llama.cpp's converter and parser name
what is wrong with a JSON schema or a grammar, in the client (and so in the gateway and
`hostler batch`), and a client without llama-cpp-python leaves the checks to the worker."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from hostler.client import InvalidRequest
from hostler.client import _grammar as grammar
from hostler.client._requests import chat_job, completion_job
from hostler.schemas import SamplingParams

BAD_GRAMMARS = {
    "root ::= item\nitem ::= missing": "Undefined rule identifier 'missing'",
    'root := "a"': "expecting ::=",
    'start ::= "a"': "grammar does not contain a 'root' symbol",
    'root ::= root "a"': "left recursion",
}


@pytest.mark.parametrize(("text", "problem"), BAD_GRAMMARS.items())
def test_a_bad_grammar_is_refused_with_llama_cpp_s_reason(text: str, problem: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid grammar: .*" + problem):
        completion_job("tiny", "x", {"grammar": text}, job_timeout=None)


@pytest.mark.parametrize(("text", "problem"), BAD_GRAMMARS.items())
def test_the_reason_survives_a_quiet_model_load(text: str, problem: str) -> None:
    """A worker loads its model quietly (llama-cpp-python's log at ERROR); the reasons llama.cpp
    logs through that callback must still reach the job's error."""
    callback_log = logging.getLogger("llama-cpp-python")
    level = callback_log.level
    callback_log.setLevel(logging.ERROR)  # what llama_cpp._logger.set_verbose(False) does
    try:
        with pytest.raises(grammar.GrammarError, match=problem):
            grammar.grammar_sampler(text)
    finally:
        callback_log.setLevel(level)


def test_a_schema_the_converter_cannot_handle_is_refused_naming_it() -> None:
    with pytest.raises(InvalidRequest, match=r"json_schema: llama\.cpp's converter cannot handle.*Unrecognized schema"):
        chat_job("tiny", [{"role": "user", "content": "x"}], {"json_schema": {"type": "strin"}}, job_timeout=None)
    with pytest.raises(InvalidRequest, match="Error resolving ref"):
        completion_job("tiny", "x", {"json_schema": {"$ref": "#/$defs/nowhere"}}, job_timeout=None)


def test_grammar_and_schema_together_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="grammar or json_schema, not both"):
        completion_job("tiny", "x", {"grammar": 'root ::= "a"', "json_schema": {"type": "object"}}, job_timeout=None)


def test_a_good_schema_becomes_a_grammar_llama_cpp_parses() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    job = completion_job("tiny", "x", {"json_schema": schema}, job_timeout=None)
    assert job.params.json_schema == schema  # the worker converts it again with its own llama.cpp
    text = grammar.grammar_of(SamplingParams(json_schema=schema))
    assert text is not None and text.startswith("integer ::=") and "root ::=" in text
    grammar.check_structured(SamplingParams(grammar='root ::= "yes" | "no"'))


def test_without_llama_cpp_the_client_checks_nothing_and_imports_nothing() -> None:
    # A fresh interpreter where llama_cpp cannot be imported: the job is built, the worker will judge it.
    code = (
        "import sys; sys.modules['llama_cpp'] = None\n"
        "from hostler.client import _grammar\n"
        "_grammar.llama_available = lambda: False\n"
        "from hostler.client._requests import completion_job\n"
        "job = completion_job('tiny', 'x', {'grammar': 'root ::= nowhere'}, job_timeout=None)\n"
        "print(job.params.grammar)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "root ::= nowhere"
