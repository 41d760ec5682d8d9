"""The interactive Codex TUI (Codex CLI 0.169.0, `codex` with no arguments), driven in tmux, through
real mitmdump and our addon, in both wirings: it starts, answers a prompt, and its `/status` shows
the pool's limits — here the mean of two accounts at 80 % and 20 % (5 hours) and 10 % and 30 %
(weekly): "50% left" and "80% left", which neither account alone would show.

Keystrokes (probed): a prompt is pasted (bracketed paste) and then Enter, because Codex takes keys
typed in a burst for a paste and ignores an Enter within it; the footer "for agents · ? for
shortcuts" marks a loaded session (typing earlier is lost). `--no-daemon` keeps Codex from starting
its shared background app-server (which would outlive the test)."""

import re

import pytest

from tests.support.codex_world import codex_env
from tests.support.tmux import Tmux, tmux_available
from tests.support.wait import wait_for

pytestmark = [pytest.mark.client, pytest.mark.e2e]

READY = "for agents · ? for shortcuts"
ANSWER = re.compile(r"• Answer from fake account (\S+)\.")
STATUS = re.compile(r"^/status\n(?:.*\n)*?\s+5h limit:.*?(\d+)% left.*\n(?:.*\n)*?\s+Weekly limit:.*?(\d+)% left",
                    re.MULTILINE)
FIGURES = {"alice": (80, 10), "bob": (20, 30)}


@pytest.fixture(scope="module")
def tmux():
    if not tmux_available():
        reason = "tmux is not installed (Debian package tmux)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)


def known_figures(world):
    rows = {world.accounts.short(a["name"]): a for a in world.proxy.http.get("/admin/accounts").json()["accounts"]}
    return all((rows[n].get("rate_limits") or {}).get("primary", {}).get("used_percent") == p
               for n, (p, _) in FIGURES.items())


@pytest.mark.parametrize("mode", ["custom", "native"])
def test_the_tui_starts_answers_and_status_shows_the_pools_limits(tmux, codex_world, mode, tmp_path):
    world = codex_world(mode, "usage_poll_seconds: 1\n")
    for name, (primary, secondary) in FIGURES.items():
        world.backend.control("PATCH", f"accounts/{world.accounts[name]}",
                              {"primary_used_percent": primary, "secondary_used_percent": secondary})
    wait_for(lambda: known_figures(world), 15, "the proxy to poll both accounts' figures")
    env = codex_env(world.home, f"{world.backend.url}/oauth/token")
    env.update(CODEX_CA_CERTIFICATE=str(world.ca), TZ="UTC")
    work = tmp_path / "work"
    work.mkdir()
    with Tmux([world.codex_bin, "--no-daemon"], env=env, cwd=work, width=200, height=50) as tui:
        tui.wait_for(READY, 60)
        tui.submit("/status")
        screen = tui.wait_for(STATUS, 20)
        five_hours, weekly = (int(x) for x in STATUS.search(screen).groups())
        assert (five_hours, weekly) == (50, 80), screen
        tui.submit("say hi")
        served = ANSWER.search(tui.wait_for(ANSWER, 60)).group(1)
        assert world.accounts.short(served) in FIGURES
        tui.wait_for(READY, 30)
        tui.submit("/quit")
        assert tui.wait_exit(20) == 0
    turns = world.turns()
    assert turns and all(t["account"] in FIGURES for t in turns)
    assert world.unknown_token_calls() == 0  # Codex never tried to refresh its placeholder
