"""Serve mongoeco over the MongoDB wire protocol (runs under Python >= 3.13, in its own venv).

Usage: mongoeco_wire.py [--port N] [--sqlite PATH] [--watch-stdin]
Prints the connection URI on its first stdout line, then serves until SIGTERM (or, with
--watch-stdin, until stdin closes). The test suite uses it for what FerretDB v1 lacks (multi-document
transactions); it is not a production engine.
"""

import argparse
import asyncio
import signal
import sys
import threading

from mongoeco.engines.memory import MemoryEngine
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.wire.proxy import AsyncMongoEcoProxyServer


async def serve(port: int, sqlite: str | None, watch_stdin: bool) -> None:
    engine = SQLiteEngine(sqlite, executor_workers=1) if sqlite else MemoryEngine()
    proxy = AsyncMongoEcoProxyServer(engine=engine, host="127.0.0.1", port=port)
    await proxy.start()
    print(proxy.address.uri, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if watch_stdin:  # the parent holds our stdin pipe: its end (even a crash) stops us
        def wait_eof() -> None:
            while sys.stdin.buffer.read(4096):
                pass
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=wait_eof, daemon=True).start()
    try:
        await stop.wait()
    finally:
        await proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--sqlite")
    parser.add_argument("--watch-stdin", action="store_true", help="stop when stdin closes")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.sqlite, args.watch_stdin))


if __name__ == "__main__":
    main()
