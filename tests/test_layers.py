"""The import rule that keeps the layers honest, checked on the source (no imports executed).

core/      pure decisions: imports nothing of ours outside core/, no mitmproxy, no I/O modules
storage/   blocking file I/O: core/ and storage/ only
upstream/  our own HTTP calls: core/, storage/, upstream/
mitm/      the only package importing mitmproxy
cli/       command-line tools: anything but mitm/
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "addons" / "codex_pool"
ALLOWED = {
    "core": {"core"},
    "storage": {"core", "storage"},
    "upstream": {"core", "storage", "upstream"},
    "mitm": {"core", "storage", "upstream", "mitm"},
    "cli": {"core", "storage", "upstream", "cli"},
}
# modules that mean I/O or the proxy: never in core/
CORE_FORBIDDEN = {"mitmproxy", "httpx", "tinydb", "yaml", "os", "socket", "subprocess", "shutil", "fcntl", "tempfile",
                  "asyncio", "logging", "urllib.request", "time"}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def layer_files():
    return sorted(p for layer in ALLOWED for p in (PACKAGE / layer).glob("*.py"))


def test_every_module_lives_in_a_layer():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"modules outside core/storage/upstream/mitm/cli: {loose}"
    assert len(layer_files()) > 40


def violations(path: Path) -> list[str]:
    layer, found = path.parent.name, []
    for name in sorted(imports(path)):
        if name.startswith("codex_pool.") and name.split(".")[1] not in ALLOWED[layer]:
            found.append(f"{layer}/{path.name} imports {name}")
        if layer != "mitm" and name.split(".")[0] == "mitmproxy":
            found.append(f"{layer}/{path.name} imports {name}: only mitm/ may")
        if layer == "core" and (name in CORE_FORBIDDEN or name.split(".")[0] in CORE_FORBIDDEN):
            found.append(f"core/{path.name} imports {name}: core is pure (pass `now` in, do I/O in storage/ or upstream/)")
    return found


@pytest.mark.parametrize("path", layer_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_layer_imports_only_what_it_may(path):
    assert violations(path) == []


def test_the_rule_catches_a_violation(tmp_path):
    bad = tmp_path / "core" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("import time\nimport mitmproxy.http\nfrom codex_pool.storage.files import fsync_dir\n")
    found = violations(bad)
    assert len(found) == 4 and any("storage.files" in v for v in found)  # time; mitmproxy twice (layer, purity); storage
    ok = tmp_path / "mitm" / "fine.py"
    ok.parent.mkdir()
    ok.write_text("import mitmproxy.http\nfrom codex_pool.core.pool import Pool\n")
    assert violations(ok) == []
