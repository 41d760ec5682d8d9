"""fake_chatgpt: a simulated ChatGPT backend for the Codex CLI (tests and offline demo).

    from fake_chatgpt import FakeChatGPT
    fake = FakeChatGPT()            # 127.0.0.1, random port
    await fake.start()
    auth = fake.add_account("alice")  # Codex auth.json dict
    ... fake.url ...
    await fake.stop()

Command line: `scripts/fake-chatgpt --names alice,bob --pool-dir DIR` (see `cli.py`).
"""

from .responses import DEFAULT_TOOL_COMMAND, TOOL_MARKER
from .server import FakeChatGPT, decode_body
from .state import Account, BackendState, Config, ControlError, Fault
from .tokens import SIGNING_KEY, decode_unverified

__all__ = [
    "Account",
    "BackendState",
    "Config",
    "ControlError",
    "DEFAULT_TOOL_COMMAND",
    "FakeChatGPT",
    "Fault",
    "SIGNING_KEY",
    "TOOL_MARKER",
    "decode_body",
    "decode_unverified",
]
