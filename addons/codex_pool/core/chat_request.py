"""`POST /v1/chat/completions` → a Responses API body for the ChatGPT backend. Pure.

| Chat Completions | Responses API (what the backend gets) |
|---|---|
| `system` / `developer` messages before the first other message | `instructions` (joined by a blank line) |
| later `system` / `developer` messages | `developer` input messages |
| `user` text and `image_url` parts (URLs or data URLs) | `input_text` / `input_image` parts |
| `assistant` content / `tool_calls` | an `output_text` message / `function_call` items |
| `tool` messages (`tool_call_id`) | `function_call_output` items |
| `tools` `{type:function, function:{name, description, parameters, strict}}` | flat function tools |
| `tool_choice` (`auto`/`none`/`required`/a named function) | `tool_choice` |
| legacy `functions` / `function_call` | `tools` / `tool_choice` |
| `parallel_tool_calls` | `parallel_tool_calls` |
| `response_format` `json_schema` / `json_object` | `text.format` |
| `reasoning_effort`, `verbosity` | `reasoning.effort`, `text.verbosity` |
| `prompt_cache_key` | `prompt_cache_key` |
| `stream`, `stream_options.include_usage` | the answer's shape (upstream always streams) |
| `n` > 1, `audio`, `modalities` with audio, `input_audio` parts | 400 naming the parameter |
| everything else (`max_tokens`, `temperature`, `stop`, `seed`, `logprobs`, …) | dropped: see DROPPED |
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from codex_pool.core import client_bodies
from codex_pool.core.client_bodies import DEFAULT_INSTRUCTIONS, BodyRefused, content_text, kept_as_is

# chat parameters with no Responses equivalent on the backend -> why they are dropped (the ones
# the Responses API has too are dropped for the same reason as there: client_bodies.DROPPED)
_SHARED = ("max_tokens", "max_completion_tokens", "temperature", "top_p", "top_logprobs", "user", "metadata",
           "service_tier", "safety_identifier", "prompt_cache_retention")
DROPPED: dict[str, str] = {
    **{name: client_bodies.DROPPED[name] for name in _SHARED},
    "presence_penalty": "no equivalent in the Responses API",
    "frequency_penalty": "no equivalent in the Responses API",
    "logit_bias": "no equivalent in the Responses API",
    "seed": "no equivalent in the Responses API",
    "stop": "no equivalent in the Responses API",
    "logprobs": "the backend does not return log probabilities",
    "n": "only n = 1 exists (n > 1 is answered 400)",
    "store": "the backend keeps nothing (store is always false)",
    "prediction": "no equivalent in the Responses API",
    "web_search_options": "no web search through the pool",
}
HANDLED = frozenset({"model", "messages", "stream", "stream_options", "tools", "tool_choice", "functions",
                     "function_call", "parallel_tool_calls", "response_format", "reasoning_effort", "verbosity",
                     "prompt_cache_key", "audio", "modalities"})
KEY_PREFIX = "cp-"  # a conversation key the proxy derived (no session header, cache key or user)


@dataclass
class ChatRequest:
    body: dict[str, Any]  # the Responses API body for the backend
    stream: bool
    include_usage: bool
    model: str
    dropped: list[str] = field(default_factory=list)


def translate(doc: dict[str, Any]) -> ChatRequest:
    """A Chat Completions request → the backend's Responses body; BodyRefused names what cannot be."""
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise BodyRefused("model", "model is required (e.g. \"gpt-5.1-codex\"; GET /v1/models lists them)")
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BodyRefused("messages", "messages must be a non-empty list")
    n = doc.get("n")
    if n is not None and n != 1:
        raise BodyRefused("n", "n > 1 is not supported through the pool: send one request per choice")
    if doc.get("audio") is not None or "audio" in (doc.get("modalities") or ()):
        raise BodyRefused("audio", "audio output is not supported by the ChatGPT backend")
    instructions, items = _messages(messages)
    body: dict[str, Any] = {
        "model": model,
        "instructions": instructions or DEFAULT_INSTRUCTIONS,
        "input": items,
        "store": False,
        "stream": True,
    }
    tools = doc.get("tools")
    if tools is None and doc.get("functions") is not None:
        tools = [{"type": "function", "function": f} for f in doc["functions"] if isinstance(f, dict)]
    if tools:
        body["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
    choice = doc.get("tool_choice", doc.get("function_call"))
    if choice is not None:
        body["tool_choice"] = _tool_choice(choice)
    if "parallel_tool_calls" in doc:
        body["parallel_tool_calls"] = bool(doc["parallel_tool_calls"])
    text: dict[str, Any] = {}
    fmt = _response_format(doc.get("response_format"))
    if fmt is not None:
        text["format"] = fmt
    if isinstance(doc.get("verbosity"), str):
        text["verbosity"] = doc["verbosity"]
    if text:
        body["text"] = text
    if kept_as_is("service_tier", doc.get("service_tier")):
        body["service_tier"] = doc["service_tier"]
    if isinstance(doc.get("reasoning_effort"), str):
        body["reasoning"] = {"effort": doc["reasoning_effort"]}
    body["prompt_cache_key"] = conversation_key(doc, instructions, items)
    stream = doc.get("stream") is True
    options = doc.get("stream_options")
    include_usage = bool(stream and isinstance(options, dict) and options.get("include_usage"))
    dropped = [name for name in doc if name not in HANDLED and not kept_as_is(name, doc[name])]
    return ChatRequest(body, stream, include_usage, model, dropped)


def conversation_key(doc: dict[str, Any], instructions: str, items: list) -> str:
    """`prompt_cache_key`, else a hash of `user`, else a hash of the instructions and the first user message:
    the same conversation gives the same key on every turn (it only grows at the end)."""
    key = doc.get("prompt_cache_key")
    if isinstance(key, str) and key.strip():
        return key.strip()[:512]
    user = doc.get("user")
    if isinstance(user, str) and user.strip():  # an end-user id: only a hash of it goes upstream
        return KEY_PREFIX + "u-" + hashlib.sha256(user.strip().encode("utf-8", "replace")).hexdigest()[:32]
    first_user = next((json.dumps(i.get("content"), sort_keys=True) for i in items
                       if isinstance(i, dict) and i.get("role") == "user"), "")
    digest = hashlib.sha256(f"{instructions}\x00{first_user}".encode("utf-8", "replace")).hexdigest()
    return KEY_PREFIX + digest[:32]


# ---- messages ----------------------------------------------------------------------------------

def _messages(messages: list) -> tuple[str, list]:
    instructions: list[str] = []
    items: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BodyRefused(f"messages[{i}]", f"messages[{i}] must be an object")
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            text = content_text(content)
            if text is None:
                raise BodyRefused(f"messages[{i}].content", f"a {role} message must hold text")
            if not items:
                instructions.append(text)
            else:
                items.append({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": text}]})
        elif role == "user":
            items.append({"type": "message", "role": "user", "content": _user_parts(content, i)})
        elif role == "assistant":
            text = content_text(content) if content is not None else None
            if content is not None and text is None:
                raise BodyRefused(f"messages[{i}].content", "an assistant message must hold text")
            if text:
                items.append({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]})
            for j, call in enumerate(m.get("tool_calls") or ()):
                items.append(_function_call(call, f"messages[{i}].tool_calls[{j}]"))
            legacy = m.get("function_call")
            if isinstance(legacy, dict):
                items.append({"type": "function_call", "call_id": f"call_{legacy.get('name', 'fn')}",
                              "name": str(legacy.get("name", "")), "arguments": str(legacy.get("arguments", ""))})
        elif role in ("tool", "function"):
            call_id = m.get("tool_call_id") or (f"call_{m.get('name', 'fn')}" if role == "function" else None)
            if not isinstance(call_id, str) or not call_id:
                raise BodyRefused(f"messages[{i}].tool_call_id", "a tool message needs the tool_call_id it answers")
            output = content_text(content)
            items.append({"type": "function_call_output", "call_id": call_id,
                          "output": output if output is not None else json.dumps(content)})
        else:
            raise BodyRefused(f"messages[{i}].role", f"unknown role {role!r} in messages[{i}]")
    return "\n\n".join(t for t in instructions if t), items


def _user_parts(content: Any, i: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    if not isinstance(content, list):
        raise BodyRefused(f"messages[{i}].content", "user content must be a string or a list of parts")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": "input_text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise BodyRefused(f"messages[{i}].content[{j}].image_url", "image_url needs a url")
            out = {"type": "input_image", "image_url": url}
            if isinstance(image, dict) and image.get("detail"):
                out["detail"] = image["detail"]
            parts.append(out)
        elif kind == "file":
            file = part.get("file") if isinstance(part.get("file"), dict) else {}
            out = {"type": "input_file"}
            for src, dst in (("file_data", "file_data"), ("filename", "filename"), ("file_id", "file_id")):
                if file.get(src):
                    out[dst] = file[src]
            parts.append(out)
        elif kind == "input_audio":
            raise BodyRefused(f"messages[{i}].content[{j}]", "audio input is not supported by the ChatGPT backend")
        else:
            raise BodyRefused(f"messages[{i}].content[{j}].type", f"unknown content part type {kind!r}")
    return parts


def _function_call(call: Any, where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise BodyRefused(where, f"{where} needs function.name")
    arguments = fn.get("arguments", "")
    return {"type": "function_call", "call_id": str(call.get("id") or f"call_{fn['name']}"), "name": fn["name"],
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}


# ---- tools and formats ---------------------------------------------------------------------------

def _tool(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise BodyRefused(f"tools[{i}]", f"tools[{i}]: only function tools are supported")
    fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool  # nested, or already flat
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise BodyRefused(f"tools[{i}].function.name", f"tools[{i}] needs function.name")
    out: dict[str, Any] = {"type": "function", "name": name,
                           "parameters": fn.get("parameters") or {"type": "object", "properties": {}}}
    if fn.get("description"):
        out["description"] = fn["description"]
    if fn.get("strict") is not None:
        out["strict"] = bool(fn["strict"])
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict):
        fn = choice.get("function") if isinstance(choice.get("function"), dict) else choice
        if isinstance(fn.get("name"), str):
            return {"type": "function", "name": fn["name"]}
    raise BodyRefused("tool_choice", "tool_choice must be auto, none, required or {type: function, function: {name}}")


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise BodyRefused("response_format.json_schema", "response_format json_schema needs json_schema.schema")
        out = {"type": "json_schema", "name": str(spec.get("name") or "response"), "schema": spec["schema"]}
        if spec.get("strict") is not None:
            out["strict"] = bool(spec["strict"])
        if spec.get("description"):
            out["description"] = spec["description"]
        return out
    raise BodyRefused("response_format.type", f"unknown response_format type {kind!r}")
