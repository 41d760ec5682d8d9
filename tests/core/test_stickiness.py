from codex_pool.core.stickiness import StickyMap


def test_entry_lives_while_used_and_expires_when_idle():
    m = StickyMap(ttl=100)
    m.put("k", "alice", now=0)
    assert m.get("k", now=90) == "alice"
    m.put("k", "alice", now=90)  # used again: idle timer restarts
    assert m.get("k", now=180) == "alice"
    assert m.get("k", now=291) is None and len(m) == 0


def test_prune_and_counts():
    m = StickyMap(ttl=10)
    m.put("a", "alice", 0)
    m.put("b", "alice", 5)
    m.put("c", "bob", 5)
    assert m.counts(8) == {"alice": 2, "bob": 1}
    assert m.prune(12) == 1 and m.counts(12) == {"alice": 1, "bob": 1}


def test_bounded_size_drops_least_recent():
    m = StickyMap(ttl=1000, max_entries=2)
    m.put("a", "x", 0)
    m.put("b", "x", 1)
    m.put("a", "x", 2)  # a is now the most recent
    m.put("c", "x", 3)
    assert m.get("b", 4) is None and m.get("a", 4) == "x" and m.get("c", 4) == "x"
