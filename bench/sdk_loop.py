"""Runs inside the SDK's venv (standard library + ``finbourne_candela`` only): timed ``session_exists`` loops.

Usage: ``python sdk_loop.py SCOPE IDENTIFIER`` with the SDK's own FBN_* environment variables set.
The first call (token grant, TCP connection) is made before ``{"ready": true}`` is printed.  Then
each line ``N`` on stdin runs N calls and prints ``{"n", "wall", "cpu", "result"}`` (seconds); an
empty line or ``0`` ends the loop.  The parent interleaves these rounds with its own candidates.
"""

from __future__ import annotations

import json
import sys
import time

from finbourne_candela import SessionsApi, SyncApiClientFactory  # type: ignore[import-not-found, unused-ignore]


def main() -> int:
    scope, identifier = sys.argv[1], sys.argv[2]
    api = SyncApiClientFactory().build(SessionsApi)
    result = api.session_exists(scope=scope, identifier=identifier)
    print(json.dumps({"ready": True, "result": result}), flush=True)
    for line in sys.stdin:
        count = int(line.strip() or 0)
        if count <= 0:
            break
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(count):
            result = api.session_exists(scope=scope, identifier=identifier)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(json.dumps({"n": count, "wall": wall, "cpu": cpu, "result": result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
