"""A chat template that renders tools, for models whose own does not (SmolLM2, the tiny GGUF):
the Hermes convention (tools listed in the system turn, calls as <tool_call> blocks, results as
<tool_response> blocks) over ChatML turns. The tests and bench_tools.py give it to models through
model.yaml, as a user would.
"""

from __future__ import annotations

from pathlib import Path

import yaml

__all__ = ["hermes_template", "tool_model"]

_HERMES = """{{ BOS }}
{%- set rest = messages %}
{%- if messages[0]['role'] == 'system' %}{% set rest = messages[1:] %}{% endif %}
{%- if tools %}<|im_start|>system
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}

{% endif %}You may call functions. Their signatures, one JSON object per line:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>
To call one, answer with {"name": <function name>, "arguments": <arguments object>}
between <tool_call> and </tool_call>.<|im_end|>
{% elif messages[0]['role'] == 'system' %}<|im_start|>system
{{ messages[0]['content'] }}<|im_end|>
{% endif %}
{%- for message in rest %}
{%- if message['role'] == 'tool' %}<|im_start|>user
<tool_response>
{{ message['content'] }}
</tool_response><|im_end|>
{% elif message['role'] == 'assistant' and message['tool_calls'] is defined %}<|im_start|>assistant
{% if message['content'] %}{{ message['content'] }}
{% endif %}{% for call in message['tool_calls'] %}<tool_call>
{"name": {{ call['function']['name'] | tojson }}, "arguments": {{ call['function']['arguments'] | tojson }}}
</tool_call>
{% endfor %}<|im_end|>
{% else %}<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def hermes_template(*, bos: bool) -> str:
    """bos: write the BOS token first (the tiny GGUF wants it; SmolLM2's own template does not)."""
    return _HERMES.replace("{{ BOS }}", "{{ bos_token }}" if bos else "")


def tool_model(models: Path, model_id: str, gguf: Path, *, bos: bool) -> Path:
    """A model folder: a link to the GGUF and a model.yaml giving it the Hermes tools template."""
    folder = models / model_id
    folder.mkdir()
    (folder / "model.gguf").symlink_to(gguf)
    manifest = {"id": model_id, "files": ["model.gguf"], "chat_template": hermes_template(bos=bos)}
    (folder / "model.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder
