"""What is sent to a server and how its reply becomes an answer: the JSON body of one chat-completion request (the
image as a data URL, the prompt, the sampling fields) and the rewrite of a structured reply into the answer
format."""

from __future__ import annotations

import base64
import io
import json
import mimetypes
from pathlib import Path

from mmkd.inference.base import InferenceRequest
from mmkd.labelling.server.config import OpenAICompatConfig
from mmkd.parsing import format_answer
from mmkd.schema import LABELS


def request_body(request: InferenceRequest, config: OpenAICompatConfig, logprobs: bool = False) -> dict:
    """The JSON body of one chat-completion request: the image and prompt, the sampling fields, and with
    ``logprobs`` the request for them (``top_logprobs`` alternatives per token)."""
    fields = config.request_fields()
    if logprobs:
        fields |= {"logprobs": True, "top_logprobs": config.top_logprobs}
    message = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": image_data_url(request)}},
            {"type": "text", "text": request.prompt},
        ],
    }
    return {
        "messages": [message],
        **{k: v for k, v in fields.items() if k != "extra_body"},
        **fields.get("extra_body", {}),
    }


def image_data_url(request: InferenceRequest) -> str:
    """The item's image as a base64 data URL: the file's own bytes when it has a known type, else PNG."""
    if request.image_path is not None:
        mime, _ = mimetypes.guess_type(request.image_path)
        if mime in ("image/png", "image/jpeg", "image/webp", "image/gif"):
            data = Path(request.image_path).read_bytes()
            return f"data:{mime};base64,{base64.b64encode(data).decode()}"
    buf = io.BytesIO()
    request.image.save(buf, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


def structured_to_answer(text: str, structured_output: str | None) -> str:
    """Rewrite a structured reply into the answer format mmkd.parsing reads; other text is returned as it is."""
    if structured_output == "json_schema":
        try:
            data = json.loads(text)
            return format_answer(data["label"], data["rationale"])
        except (ValueError, KeyError, TypeError):
            return text  # kept raw: the parser records it as unparsed
    if structured_output == "choice" and text.strip() in LABELS:
        return format_answer(text.strip(), "").strip()
    return text


def token_count(value: object) -> int | None:
    """A token count from a reply's usage, or None when the server sent none (or something else)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
