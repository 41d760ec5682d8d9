"""OpenAI-compatible clients on the proxy's listener: `/v1/responses`, `/v1/chat/completions` and
`/v1/models`, and bodies the backend accepts from any client on `/backend-api/codex/responses`.

`ClientRequests.request` (listed before Routing) turns the client's request into the backend's: the path becomes
`/backend-api/codex/responses` (its query, with any failover marker, kept), the body the
normalised or translated Responses body (core/client_bodies.py, core/chat_request.py), asked for
uncompressed. What the client asked for rides on the flow as `flow.metadata[CLIENT]` (plain values,
shown in mitmweb): the API, whether it streams, its own path (a failover 307 sends the client back
there). From then on the request is routed, failed over, judged and recorded like Codex's own.

`ClientAnswers` (listed after Verdicts) turn the answer back: a chat stream is translated
on the fly (core/answer_translate.py `ChatStream`, attached to the Verdicts tap); a client that did
not ask for a stream gets the answer buffered (so a failed turn can still be failed over) and
assembled into one object; upstream errors get the OpenAI error shape. Codex's own requests are
not touched.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

from mitmproxy import http

from codex_pool.core import answer_translate, body_decode, chat_request, client_bodies, failover, paths
from codex_pool.core.bodies import error_body, json_body
from codex_pool.core.client_bodies import BodyRefused
from codex_pool.core.pool import Pool
from codex_pool.core.sse import SSETap
from codex_pool.mitm.flows import CLIENT, answer, answer_error, describe_error

log = logging.getLogger("codex_pool")

V1_PREFIX = "/v1/"
V1_RESPONSES = "/v1/responses"
V1_CHAT = "/v1/chat/completions"
V1_MODELS = "/v1/models"
RESPONSES = "/backend-api/codex/responses"
CLIENT_VERSION = "0.169.0"  # the backend's model catalogue is asked for as this Codex version


class ClientRequests:
    """Listed before Routing: the client's request becomes the backend's."""

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        request = flow.request
        path = paths.bare(request.path)
        if not (path.startswith(V1_PREFIX) or path == "/v1"
                or (path == RESPONSES and request.method == "POST")):
            return
        try:
            if path == RESPONSES:
                headers = {"originator": request.headers.get("originator", ""),
                           "user-agent": request.headers.get("user-agent", "")}
                if client_bodies.is_codex_client(headers):
                    return  # Codex's own: byte for byte
                self._responses(flow, path)
            elif path == V1_RESPONSES and request.method == "POST":
                self._responses(flow, path)
            elif path == V1_CHAT and request.method == "POST":
                self._chat(flow)
            elif path == V1_MODELS and request.method == "GET":
                self._models(flow)
            else:
                answer_error(flow, 404, "invalid_request_error", "unknown_url",
                             f"codex-pool serves POST {V1_RESPONSES}, POST {V1_CHAT} and GET {V1_MODELS} under /v1 "
                             f"(not {request.method} {path}); point an OpenAI-style client at http://<proxy>/v1",
                             param=None)
        except BodyRefused as e:
            answer_error(flow, 400, "invalid_request_error", "invalid_request", str(e), param=e.param)
        except Exception as e:
            log.error("codex-pool: %s %s failed while translating: %s", request.method, path, describe_error(e))
            answer_error(flow, 503, "internal_error", "proxy_internal_error",
                         f"codex-pool failed while translating this request ({type(e).__name__}); it was not forwarded",
                         param=None)

    def _body(self, flow: http.HTTPFlow) -> dict:
        request = flow.request
        decoded = body_decode.decode_body(request.raw_content, request.headers.get("content-encoding"))
        if not decoded.complete:
            raise BodyRefused(None, f"the request body {decoded.detail}")
        return client_bodies.parse_json_object(decoded.data or b"")

    def _responses(self, flow: http.HTTPFlow, path: str) -> None:
        shaped = client_bodies.normalise_responses(self._body(flow))
        self._forward(flow, shaped.body, {"api": "responses", "stream": shaped.client_stream, "path": path,
                                          "dropped": shaped.dropped, "changed": shaped.changed})

    def _chat(self, flow: http.HTTPFlow) -> None:
        chat = chat_request.translate(self._body(flow))
        self._forward(flow, chat.body, {"api": "chat", "stream": chat.stream, "include_usage": chat.include_usage,
                                        "model": chat.model, "path": V1_CHAT, "dropped": chat.dropped})

    def _forward(self, flow: http.HTTPFlow, body: dict, client: dict) -> None:
        """`client["path"]` is the client's path without its query: a failover 307 sends the client
        there with our marker (failover.retry_location)."""
        request = flow.request
        request.path = RESPONSES + marker_query(request)
        request.method = "POST"
        headers = request.headers
        for name in ("content-encoding", "content-length"):
            headers.pop(name, None)
        headers["content-type"] = "application/json"
        headers["accept"] = "text/event-stream"
        headers["accept-encoding"] = "identity"  # translated and assembled here: keep it plain
        request.content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        flow.metadata[CLIENT] = client

    def _models(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        marker = marker_query(request)
        request.path = f"{paths.MODELS}?client_version={CLIENT_VERSION}" + (f"&{marker[1:]}" if marker else "")
        request.method = "GET"
        flow.metadata[CLIENT] = {"api": "models", "stream": False, "path": V1_MODELS}


class ClientAnswers:
    """Listed after Verdicts: the backend's answer becomes what the client asked for."""

    def __init__(self, pool: Pool):
        self.pool = pool

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        client = flow.metadata.get(CLIENT)
        response = flow.response
        if client is None or response is None or flow.id not in self.pool.exchanges:
            return
        try:
            if not response.headers.get("content-type", "").lower().startswith("text/event-stream"):
                return  # an error or the models list: buffered, shaped in `response`
            if not client["stream"]:
                response.stream = False  # assembled in `response`; a failed turn can still fail over
                return
            tap = response.stream if isinstance(response.stream, SSETap) else None
            if tap is None:  # Verdicts could not tap it: better an honest error than the wrong format
                response.stream = False
                client["untranslated"] = True
                return
            encoding = response.headers.get("content-encoding")
            if client["api"] == "chat":
                tap.transform = answer_translate.ChatStream(client["model"], client.get("include_usage", False),
                                                            self.pool.now(), encoding)
            elif client["path"] == V1_RESPONSES:  # the Responses API as it is, without the backend's `codex.*` events
                tap.transform = answer_translate.EventFilter(answer_translate.is_backend_event, encoding)
            else:  # a client of the backend's own endpoint gets its stream as it is
                return
            for name in ("content-encoding", "content-length"):
                response.headers.pop(name, None)
        except Exception as e:
            log.error("codex-pool: responseheaders failed on %s: %s", client.get("path"), describe_error(e))

    def response(self, flow: http.HTTPFlow) -> None:
        client = flow.metadata.get(CLIENT)
        response = flow.response
        if client is None or response is None or response.stream:
            return
        try:
            if response.status_code == 307 and "x-codex-pool-failover" in response.headers:
                return  # the client re-sends to its own path (Verdicts wrote it)
            content_type = response.headers.get("content-type", "").lower()
            if client.get("untranslated"):
                answer_error(flow, 502, "server_error", "proxy_translation_failed",
                             "codex-pool could not translate the backend's answer; retry", param=None)
            elif response.status_code == 200 and content_type.startswith("text/event-stream"):
                self._assemble(flow, client)
            elif response.status_code == 200 and client["api"] == "models":
                self._model_list(flow)
            elif response.status_code >= 400:
                self._error_shape(flow)
        except Exception as e:
            log.error("codex-pool: shaping the answer to %s failed: %s", client.get("path"), describe_error(e))
            answer_error(flow, 502, "server_error", "proxy_translation_failed",
                         f"codex-pool could not translate the backend's answer ({type(e).__name__}); retry", param=None)

    def _assemble(self, flow: http.HTTPFlow, client: dict) -> None:
        response = flow.response
        collector = answer_translate.ResponsesCollector()
        for kind, data in answer_translate.events_of(response.raw_content or b"", response.headers.get("content-encoding")):
            collector.feed(kind, data)
        if collector.error is not None or collector.terminal is None:
            error = collector.error or {"message": "the backend's stream ended before the response completed; retry",
                                        "type": "server_error"}
            status = failed_status(error)
            answer(flow, status, error_body(str(error.get("type") or "server_error"), str(error.get("code") or "response_failed"),
                                            str(error.get("message") or "the response failed"), param=None))
            return
        obj = (answer_translate.chat_completion(collector, client.get("model") or "", self.pool.now())
               if client["api"] == "chat" else collector.response_object())
        response.headers.pop("content-encoding", None)
        response.headers["content-type"] = "application/json"
        response.content = json_body(obj)

    def _model_list(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        data = body_decode.decode_body(response.raw_content, response.headers.get("content-encoding")).data or b""
        catalogue = json.loads(data or b"{}")
        answer(flow, 200, json_body(model_list(catalogue, self.pool.now())))

    def _error_shape(self, flow: http.HTTPFlow) -> None:
        """An upstream error in the OpenAI shape (answers of our own already have it)."""
        response = flow.response
        data = body_decode.decode_body(response.raw_content, response.headers.get("content-encoding"), 1 << 20).data or b""
        try:
            doc = json.loads(data) if data else None
        except ValueError:
            doc = None
        error = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(error, dict) and "message" in error:
            error.setdefault("param", None)
            error.setdefault("code", None)
            error.setdefault("type", "invalid_request_error" if response.status_code < 500 else "server_error")
            message, type_, code, extra = error.pop("message"), error.pop("type"), error.pop("code"), error
        else:
            detail = doc.get("detail") if isinstance(doc, dict) else None
            message = str(detail) if detail else (data[:500].decode("utf-8", "replace") or f"upstream answered {response.status_code}")
            type_ = "invalid_request_error" if response.status_code < 500 else "server_error"
            code, extra = None, {"param": None}
        response.headers.pop("content-encoding", None)
        response.headers["content-type"] = "application/json"
        response.content = error_body(str(type_), code, str(message), **extra)


def failed_status(error: dict) -> int:
    """The HTTP status for a response that failed inside its stream, for a client that gets one
    object: a limit → 429, the request's own fault (too long, refused prompt, ...) → 400, the rest → 502."""
    words = f"{error.get('code') or ''} {error.get('type') or ''}".lower()
    if "limit" in words or "quota" in words:
        return 429
    if "invalid" in words or "context_length" in words or "content_filter" in words or "unsupported" in words:
        return 400
    return 502


def marker_query(request: http.Request) -> str:
    """`?<failover marker>` when the request came back from a failover 307, else "": of the client's
    query only our marker goes on (a client's own parameters, keys included, never go upstream)."""
    value = request.query.get(failover.MARKER) if failover.MARKER in request.path else None
    return f"?{failover.MARKER}={quote(value)}" if value else ""


def model_list(catalogue: dict, now: float) -> dict:
    """The backend's `/codex/models` catalogue as OpenAI's model list."""
    models = catalogue.get("models") if isinstance(catalogue, dict) else None
    out = []
    for m in models or ():
        if isinstance(m, dict):
            slug = m.get("slug") or m.get("id") or m.get("model")
            if isinstance(slug, str) and slug:
                out.append({"id": slug, "object": "model", "created": int(now), "owned_by": "openai"})
    return {"object": "list", "data": out}
