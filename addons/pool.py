"""codex-pool: run Codex CLI and OpenAI-style clients through a pool of ChatGPT accounts.

    mitmdump -s addons/pool.py --mode reverse:https://chatgpt.com@127.0.0.1:8989 \
        --set connection_strategy=lazy --set pool_config=mitm.yaml

This file only wires the addon classes; the code lives in addons/codex_pool/.
"""

from codex_pool.mitm.addon import CodexPool

addons = [CodexPool()]
