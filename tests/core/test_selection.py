import pytest

from codex_pool.core.selection import Candidate, Choice, choose

A, B, C = "alice", "bob", "carol"


def cands(*specs):
    return [Candidate(*s) if isinstance(s, tuple) else Candidate(s) for s in specs]


TABLE = [
    # (candidates, kwargs, expected)
    ("empty pool", [], dict(policy="usage_balanced"), None),
    ("pinned wins over sticky", cands(A, B), dict(policy="fill_first", sticky=A, pinned=B), Choice(B, "pinned")),
    ("unusable pin is ignored", cands(A, B), dict(policy="fill_first", sticky=B, pinned="gone"), Choice(B, "sticky")),
    ("sticky kept while usable", cands(A, B, C), dict(policy="round_robin", sticky=C, last_policy_choice=A), Choice(C, "sticky")),
    ("sticky account gone -> policy", cands(A, B), dict(policy="fill_first", sticky="gone"), Choice(A, "fill_first")),
    ("round robin first", cands(B, A, C), dict(policy="round_robin"), Choice(A, "round_robin")),
    ("round robin next", cands(A, B, C), dict(policy="round_robin", last_policy_choice=A), Choice(B, "round_robin")),
    ("round robin wraps", cands(A, B, C), dict(policy="round_robin", last_policy_choice=C), Choice(A, "round_robin")),
    ("round robin skips removed", cands(A, C), dict(policy="round_robin", last_policy_choice=A), Choice(C, "round_robin")),
    ("fill first by name", cands(C, B), dict(policy="fill_first"), Choice(B, "fill_first")),
    ("balanced LRU when nothing known", cands((A, 30.0), (B, 10.0), (C, 20.0)), dict(policy="usage_balanced"), Choice(B, "usage_balanced")),
    ("balanced never-used first", cands((A, 30.0), (B, 0.0)), dict(policy="usage_balanced"), Choice(B, "usage_balanced")),
    ("balanced most headroom", cands((A, 1.0, 20.0), (B, 50.0, 90.0), (C, 2.0, 40.0)), dict(policy="usage_balanced"), Choice(B, "usage_balanced")),
    ("balanced same band -> LRU", cands((A, 5.0, 91.0), (B, 1.0, 97.0)), dict(policy="usage_balanced"), Choice(B, "usage_balanced")),
    ("balanced unknown beats nearly spent", cands((A, 0.0, 5.0), (B, 9.0, None)), dict(policy="usage_balanced"), Choice(B, "usage_balanced")),
    ("balanced unknown ranks with the best known (LRU)", cands((A, 9.0, 95.0), (B, 0.0, None)), dict(policy="usage_balanced"), Choice(B, "usage_balanced")),
    ("balanced unknown ranks with the best known (LRU 2)", cands((A, 1.0, 95.0), (B, 9.0, None)), dict(policy="usage_balanced"), Choice(A, "usage_balanced")),
    ("balanced spent loses to unknown and fresher", cands((A, 0.0, 3.0), (B, 9.0, None), (C, 5.0, 60.0)), dict(policy="usage_balanced"), Choice(C, "usage_balanced")),
    ("balanced all unknown -> LRU", cands((A, 3.0), (B, 2.0), (C, 4.0)), dict(policy="usage_balanced"), Choice(B, "usage_balanced")),
]


@pytest.mark.parametrize("label,candidates,kwargs,expected", TABLE, ids=[t[0] for t in TABLE])
def test_selection_table(label, candidates, kwargs, expected):
    assert choose(candidates, **kwargs) == expected


def test_unknown_policy_raises():
    with pytest.raises(ValueError):
        choose(cands(A), policy="nope")
