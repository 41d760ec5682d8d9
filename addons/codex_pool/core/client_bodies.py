"""Request bodies every client can send: what the ChatGPT backend's responses endpoint accepts, made
from what OpenAI-style clients send. Pure; mitm/openai_compat.py applies it to flows.

Codex's own requests pass byte-for-byte (`is_codex_client`). Every other request to the responses
endpoint — on `/backend-api/codex/responses` or through `/v1` — is normalised:

- `instructions`: the backend requires them. When a request has none, its leading `system` /
  `developer` input items become them; with none at all, `DEFAULT_INSTRUCTIONS`.
- `store: false` and `stream: true`: the backend accepts nothing else. A client that asked for
  no stream gets the final object assembled from the stream (core/answer_translate.py).
- a string `input` becomes one user message (the backend wants a list).
- `system` input messages left after that become `developer` messages (the backend refuses the
  system role in input).
- the parameters in `DROPPED` are removed (the backend answers them 400), each for the reason
  given there; `REFUSED` ones are answered 400 here, naming the parameter.
- the rest passes unchanged.

Sources for the backend's rules: scripts/fake_chatgpt/rules.py (each rule with where it is known
from); codex-lb's request cleaning strips the same parameters before forwarding.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_INSTRUCTIONS = "You are a helpful assistant."

# parameter -> why it is dropped (the README's table is made from this one)
DROPPED: dict[str, str] = {
    "max_output_tokens": "the backend rejects output limits (it sets its own)",
    "max_tokens": "the backend rejects output limits (it sets its own)",
    "max_completion_tokens": "the backend rejects output limits (it sets its own)",
    "temperature": "the backend rejects sampling settings (its reasoning models fix them)",
    "top_p": "the backend rejects sampling settings (its reasoning models fix them)",
    "top_logprobs": "the backend does not return log probabilities",
    "metadata": "the backend rejects it; nothing is stored upstream (store is false)",
    "user": "the backend rejects it; the proxy uses it only to keep the conversation on one account",
    "safety_identifier": "the backend rejects it",
    "truncation": "the backend rejects it; it manages the context itself",
    "prompt_cache_retention": "the backend rejects it; prompt caching is per account and automatic",
    "service_tier": "the backend rejects every tier but `priority` (Codex's Fast mode), which is kept",
    "max_tool_calls": "the backend rejects it",
    "background": "the backend rejects it even when false (true is answered 400 here: nothing runs in the background)",
}

# what cannot be served in any form -> why: answered 400 naming it
REFUSED: dict[str, str] = {
    "background": "background responses need stored responses, which the ChatGPT backend does not keep",
    "previous_response_id": "the ChatGPT backend keeps no responses (store is false), so none can be continued "
                            "over HTTP; send the whole conversation in input",
    "item_reference": "the ChatGPT backend keeps no items (store is false), so none can be referenced; send the "
                      "items themselves in input (with @ai-sdk/openai: store: false)",
}


def kept_as_is(name: str, value: Any) -> bool:
    """The one value of a DROPPED parameter that passes: `service_tier: priority` (Codex's Fast mode)."""
    return name == "service_tier" and value == "priority"


class BodyRefused(ValueError):
    """A request the backend cannot serve in any form: answered 400 naming `param`."""

    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


@dataclass
class Normalised:
    body: dict[str, Any]
    client_stream: bool  # what the client asked for (the upstream request always streams)
    dropped: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # e.g. "instructions from developer message"


def is_codex_client(headers: Mapping[str, str]) -> bool:
    """Codex CLI / IDE requests carry `originator: codex_…` (codex_exec, codex_cli_rs, codex_vscode)
    and a user agent that starts with the same; they are passed byte-for-byte."""
    originator = headers.get("originator", "").lower()
    agent = headers.get("user-agent", "").lower()
    return originator.startswith("codex") or agent.startswith(("codex_", "codex-"))


def parse_json_object(data: bytes, what: str = "request body") -> dict[str, Any]:
    """A JSON object from a request body, or BodyRefused with a message naming the problem."""
    if not data:
        raise BodyRefused(None, f"the {what} is empty; send a JSON object")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise BodyRefused(None, f"the {what} is not valid JSON ({type(e).__name__}: {str(e)[:120]}); "
                                "send a JSON object with content-type application/json") from None
    if not isinstance(doc, dict):
        raise BodyRefused(None, f"the {what} must be a JSON object, not {type(doc).__name__}")
    return doc


def normalise_responses(doc: dict[str, Any]) -> Normalised:
    """A non-Codex client's Responses API body → one the backend accepts (see the module doc)."""
    body = dict(doc)
    out = Normalised(body, client_stream=body.get("stream") is True)
    if body.get("background") is True:
        raise BodyRefused("background", REFUSED["background"])
    if body.get("previous_response_id"):
        raise BodyRefused("previous_response_id", REFUSED["previous_response_id"])
    body.pop("previous_response_id", None)
    for name in DROPPED:
        if name in body and not kept_as_is(name, body[name]):
            del body[name]
            out.dropped.append(name)
    if body.get("store") is not False:
        out.changed.append("store: false")
        body["store"] = False
    if body.get("stream") is not True:
        body["stream"] = True
    items = body.get("input")
    if isinstance(items, str):
        body["input"] = items = [user_message(items)]
        out.changed.append("input string as a user message")
    elif items is None:
        body["input"] = items = []
    elif not isinstance(items, list):
        raise BodyRefused("input", "input must be a string or a list of input items")
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("type") == "item_reference":
            raise BodyRefused(f"input[{i}]", REFUSED["item_reference"])
    instructions = body.get("instructions")
    if not (isinstance(instructions, str) and instructions.strip()):
        lead, rest = split_leading_instructions(items)
        if lead:
            body["instructions"] = lead
            body["input"] = items = rest
            out.changed.append("instructions from the leading system/developer input items")
        else:
            body["instructions"] = DEFAULT_INSTRUCTIONS
            out.changed.append("default instructions")
    if any(_is_system(item) for item in items):  # the backend refuses the system role in input
        body["input"] = [{**item, "role": "developer"} if _is_system(item) else item for item in items]
        out.changed.append("system input messages as developer messages")
    return out


def _is_system(item: Any) -> bool:
    return isinstance(item, dict) and item.get("role") == "system" and item.get("type", "message") == "message"


def split_leading_instructions(items: list) -> tuple[str, list]:
    """The text of the leading `system`/`developer` messages, and the items after them."""
    texts: list[str] = []
    i = 0
    while i < len(items):
        item = items[i]
        if not (isinstance(item, dict) and item.get("type", "message") == "message"
                and item.get("role") in ("system", "developer")):
            break
        text = content_text(item.get("content"))
        if text is None:
            break  # not plain text (an image in a system message?): leave it where it is
        texts.append(text)
        i += 1
    return "\n\n".join(t for t in texts if t), items[i:]


def content_text(content: Any) -> str | None:
    """Plain text of a message's content (a string, or text parts), or None when it holds more."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text") \
                    and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                return None
        return "\n".join(texts)
    return None


def user_message(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
