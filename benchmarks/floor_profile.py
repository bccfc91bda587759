"""Python calls per echo: a model's loop (``selectors`` unless told) against the bare epoll loop.

Runs each server in this process under cProfile (the model's ``serve()`` in the main thread),
loads it with the C client (benchmarks/reference/build/echo_client: ``benchmarks/run``
builds it) for 2 s, and prints the calls per round trip and the most frequent ones. Call
counts do not depend on how busy the machine is, unlike CPU time: a repeatable measure of a
loop's own overhead (docs/PERFORMANCE.md, "The floor: where the gap is").

usage: python benchmarks/floor_profile.py CONNECTIONS SIZE [MODEL]   (e.g. 50 1024, 1 64 asyncio)

``asyncio+uvloop`` profiles the asyncio model on uvloop against the minimal uvloop Protocol
server (benchmarks/reference/python_servers.py) instead of the bare loop: uvloop's own work is
C, so what cProfile counts there is exactly the Python each echo costs on top of uvloop.

To compare two versions, run it with ``PYTHONPATH=OTHER_TREE/src`` for the other one. The
count includes the server's start and stop (about 14,000 calls for ``asyncio``): on a busy
machine, where few round trips fit in the 2 s, that inflates the figure per echo (by 1.7 at
8,000 round trips, 0.3 at 50,000); compare runs with similar round-trip counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import json
import pstats
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from sockecho import ServerConfig
from sockecho.servers import MODELS

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "reference"))
import bare_epoll  # noqa: E402 (from benchmarks/reference, put on the path above)
import python_servers  # noqa: E402

CLIENT = HERE / "reference" / "build" / "echo_client"
#: Seconds of load per server.
DURATION = 2.0


def load(port: int, connections: int, size: int) -> int:
    """Round trips the C client verified in DURATION seconds."""
    argv = [str(CLIENT), str(port), str(connections), str(size), str(DURATION)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    round_trips: int = json.loads(done.stdout)["round_trips"]
    return round_trips


def profile_model(name: str, connections: int, size: int) -> tuple[cProfile.Profile, int]:
    model_name, _, loop = name.partition("+")
    config = ServerConfig(model=model_name, port=0, idle_timeout=0, loop=loop or "asyncio")
    model = MODELS[model_name](config)
    model.open()
    port = model.listeners[0].getsockname()[1]
    measured: list[int] = []

    def drive() -> None:
        measured.append(load(port, connections, size))
        model.request_stop()
        model.request_stop()  # the second: no drain

    driver = threading.Thread(target=drive)
    driver.start()
    profile = cProfile.Profile()
    profile.enable()
    model.serve()
    profile.disable()
    driver.join()
    return profile, measured[0]


class Stop(Exception):
    """Ends the bare loop (it has no stop of its own)."""


def minimal_uvloop(port: int) -> None:
    """The minimal uvloop Protocol server until SIGALRM (raised inside uvloop, Stop would be
    reported as a callback's error and swallowed: the alarm resolves a future instead)."""
    import uvloop  # noqa: PLC0415 (only this comparison needs it)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            python_servers.EchoProtocol, "127.0.0.1", port, backlog=4096
        )
        done = loop.create_future()
        signal.signal(
            signal.SIGALRM, lambda signum, frame: loop.call_soon_threadsafe(done.set_result, None)
        )
        async with server:
            await done

    uvloop.run(serve())


def profile_floor(
    connections: int, size: int, serve: Callable[[int], None] = bare_epoll.serve
) -> tuple[cProfile.Profile, int]:
    """The reference server (the bare loop unless told) under cProfile, in this thread."""
    with socket.socket() as probe:  # a free port for the bare loop
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    measured: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stop

    signal.signal(signal.SIGALRM, stop)

    def drive() -> None:
        time.sleep(0.5)  # until it listens
        measured.append(load(port, connections, size))
        signal.alarm(1)

    driver = threading.Thread(target=drive)
    driver.start()
    profile = cProfile.Profile()
    profile.enable()
    with contextlib.suppress(Stop):
        serve(port)
    profile.disable()
    driver.join()
    return profile, measured[0]


def report(label: str, profile: cProfile.Profile, round_trips: int) -> None:
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    total = sum(entry[1] for entry in stats.values())
    print(f"== {label}: {round_trips} round trips, {total / round_trips:.2f} calls per echo")
    for (path, line, function), entry in sorted(stats.items(), key=lambda kv: -kv[1][1])[:12]:
        print(f"   {entry[1] / round_trips:6.2f}/echo  {function}  ({Path(path).name}:{line})")


def main() -> int:
    connections, size = int(sys.argv[1]), int(sys.argv[2])
    name = sys.argv[3] if len(sys.argv) > 3 else "selectors"
    report(name, *profile_model(name, connections, size))
    if name.endswith("+uvloop"):
        report("minimal uvloop Protocol", *profile_floor(connections, size, minimal_uvloop))
    else:
        report("bare epoll loop", *profile_floor(connections, size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
