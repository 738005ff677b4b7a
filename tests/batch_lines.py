"""Lines of an OpenAI Batch input file, as a user writes them."""

from __future__ import annotations

import json


def chat_line(custom_id: str, text: str, model: str = "tiny", **body: object) -> str:
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
        }
    )
