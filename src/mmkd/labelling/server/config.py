"""The settings of one teacher behind an OpenAI-compatible server (``OpenAICompatConfig``), checked when it is
built, and the request fields they give every chat completion."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mmkd.schema import LABELS

# Structured output, for servers that support it. ``json_schema``: the standard ``response_format`` with the answer
# schema below (vLLM, SGLang, TGI, OpenAI); the JSON reply is rewritten into the answer format that mmkd.parsing
# reads. ``choice``: vLLM's choice over the labels (an answer without rationale), in the request field named by
# ``structured_outputs_field`` (see CHOICE_FIELDS).
STRUCTURED_OUTPUTS = ("json_schema", "choice")
# Where a ``choice`` request puts the labels. ``structured_outputs``: ``{"structured_outputs": {"choice": [...]}}``,
# vLLM's field since 0.10.2 and its only one since 0.12 (which drops ``guided_choice`` with a warning and answers
# unconstrained). ``guided``: ``{"guided_choice": [...]}``, for vLLM before 0.10.2.
CHOICE_FIELDS = ("structured_outputs", "guided")
ANSWER_JSON_SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": list(LABELS)}, "rationale": {"type": "string"}},
    "required": ["label", "rationale"],
    "additionalProperties": False,
}
MAX_TOP_LOGPROBS = 20  # the OpenAI API's limit, and vLLM's default --max-logprobs

# An environment variable's name by convention (POSIX allows lower case too; refusing it catches keys such as hf_...).
VARIABLE_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
# Values that are keys, whatever their case: AWS access key ids, and long runs of letters and digits.
KEY_LIKE = re.compile(r"(AKIA|ASIA)[A-Z0-9]{12,}|[A-Z0-9]{32,}")


@dataclass
class OpenAICompatConfig:
    """Settings of one teacher behind an OpenAI-compatible server.

    model: the model name the server knows (vLLM: the HF id it serves, or ``--served-model-name``).
    base_url: the server's ``.../v1`` URL, or a list of them: items are shared among the servers.
    api_key_env: the *name* of the environment variable that holds the API key; null for servers without auth.
    revision: which weights the server runs (e.g. the HF commit); part of the cache key, so new weights re-ask.
    max_concurrency: requests in flight per server.
    timeout: seconds one attempt may take, from sending the request to the last byte of the reply.
    max_retries: further attempts per item after the first, on any server (at most ``max_retries + 1`` in all).
    pause_server_after: failed attempts in a row (5xx, timeouts, connection errors, malformed replies; not 429)
        after which a server is paused: its items go to the other servers, or wait for it when it is the last.
    pause_s: the first pause of a failing server, in seconds; then it gets one probe request, and a success puts
        it back in rotation.
    max_pause_s: the longest pause: each failed probe doubles the pause, up to this.
    give_up_after_s: the run stops when no server has answered successfully for this many seconds since the first
        failure (at least ``timeout``); long enough to ride through a server's restart.
    temperature, top_p, seed, max_tokens: sampling; part of the cache key.
    structured_output: null, ``json_schema`` or ``choice`` (see STRUCTURED_OUTPUTS).
    structured_outputs_field: the request field of ``choice``: ``structured_outputs`` (vLLM >= 0.10.2) or ``guided``
        (``guided_choice``, older vLLM); see CHOICE_FIELDS. Part of the cache key.
    top_logprobs: alternatives per token to ask for (0 to 20) to read the score from (see ``label_slot_score``);
        null: ask for no logprobs, scores are None. Not part of the cache key (logprobs do not change the text).
    extra_body: other server-specific request fields, sent as they are (part of the cache key).
    price_per_million_prompt_tokens / _completion_tokens: optional prices; metrics then report the cost.
    """

    model: str
    base_url: str | list[str]
    api_key_env: str | None = None
    revision: str | None = None
    max_concurrency: int = 16
    timeout: float = 120.0
    max_retries: int = 5
    pause_server_after: int = 8
    pause_s: float = 1.0
    max_pause_s: float = 30.0
    give_up_after_s: float = 300.0
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    structured_output: str | None = None
    structured_outputs_field: str = "structured_outputs"
    top_logprobs: int | None = 20
    extra_body: dict = field(default_factory=dict)
    price_per_million_prompt_tokens: float | None = None
    price_per_million_completion_tokens: float | None = None

    def __post_init__(self):
        self.base_urls: list[str] = [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)
        if not self.base_urls or not all(isinstance(u, str) and u for u in self.base_urls):
            raise ValueError(f"base_url must be a URL or a non-empty list of URLs, got {self.base_url!r}")
        if self.max_concurrency < 1 or self.max_retries < 0 or self.timeout <= 0 or self.max_tokens < 1:
            raise ValueError(
                "need max_concurrency >= 1, max_retries >= 0, timeout > 0 and max_tokens >= 1, got "
                f"{self.max_concurrency}, {self.max_retries}, {self.timeout}, {self.max_tokens}"
            )
        if self.pause_server_after < 1:
            raise ValueError(f"pause_server_after must be >= 1 failed attempts, got {self.pause_server_after}")
        if not 0 < self.pause_s <= self.max_pause_s:
            raise ValueError(f"need 0 < pause_s <= max_pause_s, got {self.pause_s} and {self.max_pause_s}")
        if self.give_up_after_s < self.timeout:  # else one slow but good reply could end the run
            raise ValueError(
                f"give_up_after_s ({self.give_up_after_s}) must be at least timeout ({self.timeout}): a reply may "
                "take that long"
            )
        if self.structured_output not in (None, *STRUCTURED_OUTPUTS):
            raise ValueError(f"structured_output must be null or one of {STRUCTURED_OUTPUTS}")
        if self.structured_outputs_field not in CHOICE_FIELDS:
            raise ValueError(
                f"structured_outputs_field must be one of {CHOICE_FIELDS}, got {self.structured_outputs_field!r}"
            )
        top = self.top_logprobs
        if top is not None and (not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_TOP_LOGPROBS):
            raise ValueError(f"top_logprobs must be null or an integer from 0 to {MAX_TOP_LOGPROBS}, got {top!r}")
        if self.api_key_env is not None and not is_variable_name(self.api_key_env):
            # never echo the value: it may be the key itself
            raise ValueError(
                "api_key_env must be the *name* of an environment variable: upper-case letters, digits and _, "
                f"like VLLM_API_KEY; got a value of {len(str(self.api_key_env))} characters that is not one "
                "(if it is your key, remove it from the config and rotate it)"
            )

    def request_fields(self) -> dict:
        """The fields of every chat-completion request besides the messages (sampling and structured output)."""
        fields = {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.top_p is not None:
            fields["top_p"] = self.top_p
        if self.seed is not None:
            fields["seed"] = self.seed
        extra = dict(self.extra_body)
        if self.structured_output == "json_schema":
            fields["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "mmkd_answer", "schema": ANSWER_JSON_SCHEMA, "strict": True},
            }
        elif self.structured_output == "choice" and self.structured_outputs_field == "guided":
            extra["guided_choice"] = list(LABELS)
        elif self.structured_output == "choice":  # kept beside other options given in extra_body (e.g. a backend)
            extra["structured_outputs"] = {**extra.get("structured_outputs", {}), "choice": list(LABELS)}
        if extra:
            fields["extra_body"] = extra
        return fields


def is_variable_name(value: object) -> bool:
    """Whether ``value`` can be the name of the variable that holds a key, and does not look like a key itself."""
    return isinstance(value, str) and bool(VARIABLE_NAME.fullmatch(value)) and not KEY_LIKE.fullmatch(value)
