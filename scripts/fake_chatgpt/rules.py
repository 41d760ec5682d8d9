"""What the real `chatgpt.com/backend-api/codex/responses` refuses, as far as it is publicly known.

Pure: `check(body, transport=..., headers=...)` returns the first `Violation` or None. The server
answers a violation 400 (HTTP) or with an error frame (WebSocket `response.create`), after
authentication and before any other work (faults, usage limits, generation). `Config.lenient`
(`--lenient`, `POST /_fake/config {"lenient": true}`) turns every rule off.

`RULES` is the table (rule, error, source, confidence); README.md and `fake-chatgpt --help` are
made from it. Sources are public issue threads and code, cited as `owner/repo#N` (GitHub issue or
pull request) or `owner/repo:path`. Dates are those of the reports.

Error shapes (both seen in public reports):
- gateway checks answer FastAPI-style `{"detail": "<message>"}` over HTTP; over WebSocket the same
  message arrives as `{"type":"error","status":400,"error":{"type":"invalid_request_error",
  "message":"<message>"}}` (seen for the unsupported-model check: openai/codex#6603 (HTTP) and
  openai/codex#25838 (WebSocket); assumed alike for the other `detail` checks);
- request-schema checks answer the OpenAI error object `{"error":{"message","type","param","code"}}`
  (seen for `tools[0].name`: violettoolssite/codexProapi#1).

Order of the checks: reports show `instructions` is checked before system messages
(PwnKit-Labs/pwnkit#330) and `store` before unsupported parameters (kortix-ai/suna#5124); parameters
are reported one at a time (langwatch/langwatch#7507). The rest of the order is a guess.

Deliberately NOT enforced (no public report, or reports that conflict with what Codex itself
sends): `include` values, `text.verbosity`, `text.format`, a string `input`, `prompt_cache_options`
(refused in one probe, langwatch/langwatch#7507, but model-dependent and a field Codex 0.169.0 can
send), `service_tier: "default"`, "Instructions are not valid" (an allow-list of prompts reported
in 2025, openai/codex#3376; 2026 reports show arbitrary instructions accepted), the
`/responses/compact` body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Rule:
    id: str
    what: str  # the rule, in a few words
    error: str  # the answer (HTTP); WebSocket: see the module docstring
    source: str
    confidence: str  # high | medium | low, with a word on why


# parameter -> (source, confidence) ; answered {"detail": "Unsupported parameter: <name>"}
UNSUPPORTED_PARAMETERS: dict[str, tuple[str, str]] = {
    "max_output_tokens": (
        ("RayBytes/ChatMock#103, decolua/9router#812, kortix-ai/suna#5124, langwatch/langwatch#7507, "
         "pydantic/pydantic-ai#6433 (probed live)"), "high"),
    "max_tokens": (
        ("not a Responses parameter; the backend refuses fields outside its allow-list "
         "(langwatch/langwatch#7507); clients strip it with max_output_tokens (pydantic/pydantic-ai#6433)"),
        "low: no report quotes this exact name"),
    "max_completion_tokens": (
        "as max_tokens: outside the backend's allow-list (langwatch/langwatch#7507)",
        "low: no report quotes this exact name"),
    "temperature": (
        ("finch-xu/cc-router#32, NousResearch/hermes-agent#16487, aaif-goose/goose#9931, "
         "pydantic/pydantic-ai#6433, langwatch/langwatch#7507"), "high"),
    "top_p": ("pydantic/pydantic-ai#6433 (probed live), langwatch/langwatch#7507", "medium"),
    "top_logprobs": ("langwatch/langwatch#7507 (probed live, one field at a time)", "medium"),
    "max_tool_calls": ("langwatch/langwatch#7507", "medium"),
    "truncation": (
        "decolua/9router#1320, coder/xum#3153, mcowger/plexus#741, langwatch/langwatch#7507", "high"),
    "metadata": ("170-carry/codex-tools#54, router-for-me/CLIProxyAPI#5112, langwatch/langwatch#7507", "high"),
    "user": ("langwatch/langwatch#7507", "medium"),
    "safety_identifier": ("langwatch/langwatch#7507", "medium"),
    "prompt_cache_retention": ("langwatch/langwatch#7507", "medium"),
    "background": ("decolua/9router#868 (even `false`), langwatch/langwatch#7507", "high"),
}

# over plain HTTP only; over WebSocket it chains to the socket's previous response
HTTP_ONLY_UNSUPPORTED: dict[str, tuple[str, str]] = {
    "previous_response_id": (("r1n7aro/Locus#35 (HTTP), langwatch/langwatch#7507; over WebSocket it "
                              "is Codex's normal chaining (agentjido/req_llm#736)"), "high"),
}

# service_tier values answered "Unsupported service_tier: <v>"; "priority" (Codex's Fast mode) passes
REFUSED_SERVICE_TIERS = {"auto", "fast", "flex"}

MODEL_MESSAGE = "The '{model}' model is not supported when using Codex with a ChatGPT account."

RULES: list[Rule] = [
    Rule("instructions", "`instructions` present (not null); \"\" passes",
         '{"detail":"Instructions are required"}',
         "vybestack/llxprt-code#1197, PwnKit-Labs/pwnkit#330 (a developer message in input does not "
         "count), mnfst/llm-gateway#1169, diegosouzapw/OmniRoute#1709, EasyMetaAu/helm-api#310; "
         "\"\" accepted: icebear0828/codex-proxy#112",
         "high (2026-01..06). Exemption, an ASSUMPTION: Codex 0.169.0 sends no `instructions` (its "
         "base prompt is the first developer input item; recorded fixtures), so bodies recognisably "
         "from Codex pass: header `originator: codex_*` or `client_metadata` with "
         "`x-codex-installation-id` / `x-codex-turn-metadata`"),
    Rule("store", "`store` present and false",
         '{"detail":"Store must be set to false"}',
         "openai/codex#26173 (store:true), router-for-me/CLIProxyAPI#41, diegosouzapw/OmniRoute#1432; "
         "omitted store refused: zyycn/codex-proxy-rs#134",
         "high for true, medium for omitted"),
    Rule("stream", "`stream` present and true",
         '{"detail":"Stream must be set to true"}',
         "kryptobaseddev/cleo#1079 (stream:false), QuantumNous/new-api#5819",
         "high for false, medium for omitted (the public API's default is false)"),
    Rule("unsupported_parameter",
         "none of: " + ", ".join(f"`{p}`" for p in UNSUPPORTED_PARAMETERS)
         + "; over HTTP also `previous_response_id` (present with any value, even false/null)",
         '{"detail":"Unsupported parameter: <name>"}',
         "per parameter, see UNSUPPORTED_PARAMETERS in rules.py / the README table",
         "high..low per parameter"),
    Rule("service_tier", "`service_tier` not " + "/".join(sorted(REFUSED_SERVICE_TIERS))
         + " (`priority` = Codex's Fast mode passes)",
         '{"error":{"type":"invalid_request_error","message":"Unsupported service_tier: <v>"}}',
         "openai/codex#15099 (flex, WebSocket frame), Soju06/codex-lb#163 (fast; priority accepted), "
         "can1357/oh-my-pi#6451 (auto), mcowger/plexus#906",
         "high for the values; the HTTP body is the WebSocket frame's `error` object (assumed)"),
    Rule("model", "`model` one of the catalogue's slugs (GET /codex/models)",
         '{"detail":"' + MODEL_MESSAGE.replace("{model}", "<model>") + '"}',
         "openai/codex#6603 and #10600 (HTTP, also for \"\"), openai/codex#25838, "
         "zed-industries/codex-acp#223 (WebSocket frame), router-for-me/CLIProxyAPI#3647",
         "high; a missing model is treated as \"\" (assumed)"),
    Rule("system_messages", "no input message with role `system`",
         '{"detail":"System messages are not allowed"}',
         "router-for-me/CLIProxyAPI#1121, ginlix-ai/LangAlpha#100",
         "high"),
    Rule("tool_shape", "each `tools[i]` of type function is flat: `{type, name, parameters, strict?}`",
         '{"error":{"message":"Missing required parameter: \'tools[0].name\'.","type":"invalid_request_error",'
         '"param":"tools[0].name","code":"missing_required_parameter"}}',
         "violettoolssite/codexProapi#1 (OpenCode through a proxy), diegosouzapw/OmniRoute#1914",
         "high"),
]


# --------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Violation:
    rule: str
    message: str
    shape: str = "detail"  # "detail" | "error"
    param: str | None = None
    code: str | None = None
    status: int = 400

    def http_body(self) -> dict:
        if self.shape == "detail":
            return {"detail": self.message}
        err: dict[str, Any] = {"message": self.message, "type": "invalid_request_error"}
        if self.param is not None or self.code is not None:
            err.update(param=self.param, code=self.code)
        return {"error": err}

    def ws_frame(self) -> dict:
        if self.shape == "detail":
            err: dict[str, Any] = {"type": "invalid_request_error", "message": self.message}
        else:
            err = dict(self.http_body()["error"])
        return {"type": "error", "status": self.status, "error": err}


CODEX_METADATA_KEYS = ("x-codex-installation-id", "x-codex-turn-metadata")


def is_codex_request(body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> bool:
    """First-party Codex: `originator: codex_*` (codex_exec, codex_cli_rs, codex_vscode, …) or its
    `client_metadata` keys. Only used for the `instructions` exemption (see RULES)."""
    if headers:
        lower = {k.lower(): v for k, v in headers.items()}
        if str(lower.get("originator", "")).lower().startswith("codex"):
            return True
    meta = body.get("client_metadata")
    return isinstance(meta, Mapping) and any(k in meta for k in CODEX_METADATA_KEYS)


def _system_message(item: Any) -> bool:
    return isinstance(item, Mapping) and item.get("role") == "system" and item.get("type", "message") == "message"


def check(
    body: Mapping[str, Any],
    *,
    transport: str = "http",
    headers: Mapping[str, str] | None = None,
    known_models: set[str] | frozenset[str] | None = None,
) -> Violation | None:
    """The first rule `body` breaks (`transport`: "http" or "ws"), or None. `known_models=None`
    skips the model check."""
    if body.get("instructions") is None and not is_codex_request(body, headers):
        return Violation("instructions", "Instructions are required")
    if body.get("store") is not False:
        return Violation("store", "Store must be set to false")
    if body.get("stream") is not True:
        return Violation("stream", "Stream must be set to true")
    for key in body:
        if key in UNSUPPORTED_PARAMETERS or (transport == "http" and key in HTTP_ONLY_UNSUPPORTED):
            return Violation("unsupported_parameter", f"Unsupported parameter: {key}", param=key)
    tier = body.get("service_tier")
    if isinstance(tier, str) and tier in REFUSED_SERVICE_TIERS:
        return Violation("service_tier", f"Unsupported service_tier: {tier}", shape="error")
    if known_models is not None:
        model = body.get("model")
        name = model if isinstance(model, str) else ("" if model is None else str(model))
        if name not in known_models:
            return Violation("model", MODEL_MESSAGE.format(model=name))
    items = body.get("input")
    if isinstance(items, list) and any(_system_message(i) for i in items):
        return Violation("system_messages", "System messages are not allowed")
    tools = body.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            if isinstance(tool, Mapping) and tool.get("type") == "function" and not isinstance(tool.get("name"), str):
                param = f"tools[{i}].name"
                return Violation(
                    "tool_shape", f"Missing required parameter: '{param}'.", shape="error", param=param,
                    code="missing_required_parameter",
                )
    return None


def unsupported_table() -> list[tuple[str, str, str]]:
    """(parameter, source, confidence) rows, HTTP-only ones marked."""
    rows = [(p, s, c) for p, (s, c) in UNSUPPORTED_PARAMETERS.items()]
    rows += [(f"{p} (HTTP only)", s, c) for p, (s, c) in HTTP_ONLY_UNSUPPORTED.items()]
    return rows


def help_text(width: int = 100) -> str:
    """The rules for `fake-chatgpt --help`."""
    import textwrap

    def wrap(text: str, first: str, rest: str = "        ") -> list[str]:
        return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest, break_long_words=False,
                             break_on_hyphens=False)

    lines = ["backend rules (POST /backend-api/codex/responses and WebSocket response.create; 400 /",
             "error frame after authentication, before faults and limits; --lenient turns them off):"]
    for r in RULES:
        lines += wrap(r.what, f"  {r.id}: ", "      ")
        lines += wrap(r.error, "      -> ", "         ")
        lines += wrap(r.source, "      source: ")
        lines += wrap(r.confidence, "      confidence: ")
    lines.append("  unsupported parameters, each -> {\"detail\":\"Unsupported parameter: <name>\"}:")
    for p, s, c in unsupported_table():
        lines += wrap(f"{s} [{c}]", f"      {p}: ")
    return "\n".join(lines)
