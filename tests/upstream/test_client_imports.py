"""Our upstream client imports nothing once traffic flows: httpcore would load anyio's asyncio
backend (~25 ms of imports) on the event loop when it first closes a connection, mid-traffic."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent("""
    import asyncio, sys
    from codex_pool.upstream.tokens import make_client

    imported = []

    async def serve(reader, writer):
        await reader.readuntil(b"\\r\\n\\r\\n")
        writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: 2\\r\\n\\r\\n{}")
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = make_client()
        sys.addaudithook(lambda event, args: imported.append(args[0]) if event == "import" else None)
        for _ in range(2):
            r = await client.get(f"http://127.0.0.1:{port}/backend-api/wham/usage")
            assert r.status_code == 200
        await client.aclose()
        server.close()

    asyncio.run(main())
    print(sorted(set(imported)))
""")


def test_the_upstream_client_imports_nothing_while_serving():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": f"{ROOT / 'addons'}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", f"imported while serving: {done.stdout.strip()}"
