"""codex-pool: run Codex CLI and OpenAI-style clients through a pool of ChatGPT accounts.

    mitmdump -s addons/pool.py --mode reverse:https://chatgpt.com@127.0.0.1:8989 \
        --set connection_strategy=lazy --set pool_config=mitm.yaml

The pipeline, one small addon per concern (as mitmproxy's own default_addons() lists its own),
all sharing one explicit `Pool`. Hooks run in list order. They sit behind one `Pipeline` entry,
so mitmproxy walks one addon instead of nine on every event (mitm/pipeline.py).
"""

import time

from codex_pool.core.pool import Pool
from codex_pool.mitm.client_auth import ClientAuth
from codex_pool.mitm.commands import Commands
from codex_pool.mitm.contentview import CodexStreamView
from codex_pool.mitm.endpoints import LocalEndpoints
from codex_pool.mitm.guard import CredentialGuard
from codex_pool.mitm.lifecycle import Lifecycle
from codex_pool.mitm.models_cache import ModelsCache
from codex_pool.mitm.openai_compat import ClientAnswers, ClientRequests
from codex_pool.mitm.pipeline import Pipeline
from codex_pool.mitm.routing import Routing
from codex_pool.mitm.verdicts import Verdicts
from codex_pool.mitm.watchdog import StreamWatchdog
from codex_pool.mitm.websockets import WebSocketTurns
from codex_pool.upstream.tokens import TokenService

pool = Pool(clock=time.time)
tokens = TokenService(pool)
lifecycle = Lifecycle(pool, tokens)

addons = [
    Pipeline([
        lifecycle,  # the pool_config option, mitm.yaml → pool, background services
        ClientAuth(pool),  # requestheaders/request: client keys (when on): 401/429/403 locally, /v1/usage
        CodexStreamView(),  # the "Codex stream" content view in mitmweb
        CredentialGuard(),  # requestheaders: client credentials never go upstream; refuses unsafe settings
        LocalEndpoints(pool, lifecycle),  # request: /healthz, /metrics, /admin/*, accounts/check, /oauth/token
        ClientRequests(),  # request: /v1/* and other clients' bodies → what the backend accepts
        ModelsCache(pool, tokens),  # request: a recent models list answered locally; response: keep a copy
        Routing(pool, tokens),  # request: account + credentials (after a refresh it waits for), or an honest answer
        Verdicts(pool, tokens),  # responseheaders/response/error: stream tap, failover, ledger
        ClientAnswers(pool),  # responseheaders/response: answers translated back for /v1 clients
        WebSocketTurns(pool, tokens),  # websocket_message/_end: turns, error frames, ledger
        StreamWatchdog(pool),  # request: watch it; an upstream silent too long is cut, the account cooled
        Commands(pool, lifecycle),  # codex_pool.pin/unpin/disable/enable/reload/accounts
    ]),
]
