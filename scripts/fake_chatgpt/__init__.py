"""fake_chatgpt: a simulated ChatGPT backend for the Codex CLI (tests and offline demo).

    from fake_chatgpt import FakeChatGPT
    fake = FakeChatGPT()            # 127.0.0.1, random port
    await fake.start()
    auth = fake.add_account("alice")  # Codex auth.json dict
    ... fake.url ...
    await fake.stop()

Command line: `scripts/fake-chatgpt --names alice,bob --pool-dir DIR` (see `cli.py`).

Responses requests are held to the real backend's publicly known rules (`rules.py`; `Config.lenient`
/ `--lenient` turns them off); Codex's side requests are answered by `side.py`.
"""

from .responses import DEFAULT_TOOL_COMMAND, TOOL_MARKER
from .rules import RULES, Violation
from .rules import check as check_rules
from .server import FakeChatGPT, decode_body
from .state import Account, BackendState, Config, ControlError, Fault
from .tokens import SIGNING_KEY, decode_unverified

__all__ = [
    "DEFAULT_TOOL_COMMAND",
    "RULES",
    "SIGNING_KEY",
    "TOOL_MARKER",
    "Account",
    "BackendState",
    "Config",
    "ControlError",
    "FakeChatGPT",
    "Fault",
    "Violation",
    "check_rules",
    "decode_body",
    "decode_unverified",
]
