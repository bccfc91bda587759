"""The layers: the command line imports the library, never the reverse."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import sockecho

#: Modules that are the command line itself (or start it).
CLI_MODULES = {"sockecho.cli", "sockecho.__main__"}


def modules_loaded_by(imports: list[str]) -> set[str]:
    """The sockecho modules a fresh interpreter holds after importing ``imports``."""
    program = "\n".join(
        [*(f"import {name}" for name in imports), "import sys", "print(*sorted(sys.modules))"]
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30, check=True
    )
    return {name for name in done.stdout.split() if name.startswith("sockecho")}


def test_bench_ping_and_client_load_without_the_cli() -> None:
    loaded = modules_loaded_by(["sockecho.bench", "sockecho.ping", "sockecho.client"])
    assert {"sockecho.bench", "sockecho.ping", "sockecho.client"} <= loaded
    assert "sockecho.cli" not in loaded


def test_no_library_module_loads_the_cli() -> None:
    library = [
        module.name
        for module in pkgutil.walk_packages(sockecho.__path__, "sockecho.")
        if module.name not in CLI_MODULES
    ]
    assert "sockecho.trace" in library  # the walk found the package's modules
    loaded = modules_loaded_by(library)
    assert not loaded & CLI_MODULES
