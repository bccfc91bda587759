"""The package as a user gets it: build a wheel and an sdist, install the wheel in a fresh venv.

Entry points, package data (py.typed) and the plugin module are only proven by an install
that does not see the source tree, so the venv has no system site-packages and the commands
run from a directory outside the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import sockecho
from tests.conftest import REPO, WAIT

#: Seconds for a build or an install (an index download, a cold cache on a busy machine).
INSTALL_TIMEOUT = 150.0


def run(*command: str | Path, cwd: Path, timeout: float = WAIT) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_installs_in_a_fresh_venv_and_every_entry_point_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    build = (sys.executable, "-m", "build", "--outdir", dist, REPO)
    run(*build, cwd=tmp_path, timeout=INSTALL_TIMEOUT)
    version = sockecho.__version__
    wheel = dist / f"sockecho-{version}-py3-none-any.whl"
    sdist = dist / f"sockecho-{version}.tar.gz"
    assert sorted(dist.iterdir()) == sorted([wheel, sdist])  # the one version, in both names
    run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist, cwd=tmp_path)

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(f"sockecho-{version}.dist-info/entry_points.txt").decode()
    assert {"sockecho/py.typed", "sockecho/__main__.py", "pytest_sockecho.py"} <= names
    assert "sockecho = sockecho.cli:main" in entry_points
    assert "[pytest11]\nsockecho = pytest_sockecho" in entry_points
    assert f"sockecho-{version}.dist-info/licenses/LICENSE" in names  # pyproject's MIT, shipped
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {
        "LICENSE",
        "CHANGELOG.md",
        "tests/conftest.py",
        "docs/pytest.md",
        "src/sockecho/py.typed",
    } <= members

    # A venv of its own (no system site-packages), filled by this venv's pip: ensurepip would
    # add a pip the test does not need, and takes most of a minute on a busy machine.
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python, command = venv / "bin" / "python", venv / "bin" / "sockecho"
    install = (sys.executable, "-m", "pip", "--python", python, "install", "--quiet", wheel)
    run(*install, cwd=tmp_path, timeout=INSTALL_TIMEOUT)

    assert run(command, "--version", cwd=tmp_path).strip() == f"sockecho {version}"
    assert run(python, "-m", "sockecho", "--version", cwd=tmp_path).strip() == f"sockecho {version}"
    where = run(python, "-c", "import sockecho; print(sockecho.__file__)", cwd=tmp_path)
    assert where.startswith(str(venv))  # the installed copy, not the source tree
    missing_extra = subprocess.run(
        [python, "-c", "import sockecho.locust"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert "sockecho.locust needs Locust: pip install 'sockecho[locust]'" in missing_extra.stderr

    serve = subprocess.Popen(
        [command, "serve", "--port", "0"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert serve.stderr is not None
        ready = serve.stderr.readline()  # the test's timeout bounds this wait
        assert ready.startswith("listening on tcp://127.0.0.1:"), ready
        port = ready.rsplit(":", 1)[1].strip()
        echoed = run(command, "send", "--port", port, "hola", "desde", "el", "wheel", cwd=tmp_path)
        assert echoed == "hola desde el wheel\n"
    finally:
        serve.terminate()
        serve.wait(WAIT)
        serve.stderr.close()  # type: ignore[union-attr]
    assert serve.returncode == 0
