"""The credential guard: before anything can be sent upstream, the client's own credentials are
dropped from every forwardable request and its body is kept buffered, so routing (in `request`)
always happens first. It also refuses the mitmproxy settings under which that cannot hold."""

from __future__ import annotations

import logging

from mitmproxy import ctx, exceptions, http

from codex_pool.core import paths
from codex_pool.core.addresses import is_loopback
from codex_pool.mitm.flows import answer_error, describe_error, drop_client_credentials

log = logging.getLogger("codex_pool")

# Real clients send a few KB of headers. Past this, upstreams drop the connection (the simulated one
# did at 20,000 headers), which would cool a pool account for the client's request: answered here.
# Counted only for requests with over 64 header lines, so the usual request pays one len().
MAX_HEADER_BYTES = 64 * 1024


class CredentialGuard:
    def configure(self, updated: set[str]) -> None:
        if "stream_large_bodies" in updated and getattr(ctx.options, "stream_large_bodies", None):
            # A streamed request body makes mitmproxy send the headers upstream before our request
            # hook runs: the client's own credentials would go out and routing would be skipped.
            raise exceptions.OptionsError(
                "stream_large_bodies: codex-pool must see a whole request before anything is sent upstream "
                "(to pick the account and replace the client's credentials); unset it. SSE answers are "
                "streamed by codex-pool itself."
            )
        if updated & {"web_host", "web_password"} and hasattr(ctx.options, "web_host"):
            refused = web_exposure_problem(ctx.options.web_host, getattr(ctx.options, "web_password", ""))
            if refused:
                raise exceptions.OptionsError(refused)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        try:
            if paths.is_local(flow.request.path):
                return
            flow.request.stream = False
            fields = flow.request.headers.fields
            if len(fields) > 64 and sum(len(k) + len(v) for k, v in fields) > MAX_HEADER_BYTES:
                drop_client_credentials(flow.request.headers)  # answered here: nothing of the client's stays
                answer_error(flow, 431, "invalid_request_error", "request_headers_too_large",
                             f"the request's headers are over {MAX_HEADER_BYTES // 1024} KB; not forwarded (an "
                             "upstream would drop the connection, and the pool account would be blamed for it)")
                return
            drop_client_credentials(flow.request.headers)
        except Exception as e:
            log.error("codex-pool: requestheaders failed on %s: %s", flow.request.path, describe_error(e))


def web_exposure_problem(web_host: str, web_password: str | None) -> str | None:
    """mitmweb shows every flow (requests, answers, account names): beyond loopback it must ask
    for a password. None when the setting is safe, else what to change."""
    if is_loopback(web_host) or web_password:
        return None
    return (
        f"web_host: mitmweb would listen on {web_host!r} without a password, and anyone who reaches it could read "
        "every flow. Set web_password (see README, 'Inspecting flows'), or keep web_host on 127.0.0.1 and use an "
        "SSH tunnel."
    )
