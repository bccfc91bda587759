"""Spanish narration: ``--lang es`` or a Spanish locale; the catalogs are complete and current."""

from __future__ import annotations

import gettext
import io
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from sockecho import Server, ServerConfig, i18n, narration
from sockecho.trace import Tracer
from tests.conftest import WAIT, ServeProcess, connect, recv_exactly

SOURCE = Path(i18n.__file__).parent
#: The keywords sockecho marks messages with (as ``make catalogs`` extracts them).
KEYWORDS = {"_": None, "N_": None, "ngettext": (1, 2), "counted": (1, 2)}


@pytest.fixture(autouse=True)
def _english_afterwards() -> Iterator[None]:
    yield
    i18n.set_language("en")


def source_messages() -> set[str]:
    found = set()
    for _path, _line, message, _comments, _context in extract_from_dir(
        str(SOURCE), keywords=KEYWORDS, method_map=[("**.py", "python")]
    ):
        found.add(message[0] if isinstance(message, tuple) else message)
    return found


def spanish_catalog() -> dict[str, str | tuple[str, ...]]:
    with (SOURCE / "locale" / "es" / "LC_MESSAGES" / "sockecho.po").open("rb") as po:
        catalog = read_po(po)
    return {(m.id[0] if isinstance(m.id, tuple) else m.id): m.string for m in catalog if m.id}


def test_every_message_in_the_source_has_a_spanish_translation_and_none_is_stale() -> None:
    in_source = source_messages()
    translated = spanish_catalog()
    assert in_source, "no message found: are the keywords right?"
    assert in_source - translated.keys() == set(), "run `make catalogs` and translate"
    assert translated.keys() - in_source == set(), "stale entries: run `make catalogs`"
    for message, string in translated.items():
        strings = string if isinstance(string, tuple) else (string,)
        assert all(strings), f"{message!r} has an empty translation"


def test_the_compiled_catalog_matches_its_source() -> None:
    """The .mo the package ships says what the .po says (``make catalogs`` compiles it)."""
    with (SOURCE / "locale" / "es" / "LC_MESSAGES" / "sockecho.mo").open("rb") as mo:
        compiled = gettext.GNUTranslations(mo)
    for message, string in spanish_catalog().items():
        if isinstance(string, tuple):
            assert compiled.ngettext(message, message + "s", 1) == string[0]
            assert compiled.ngettext(message, message + "s", 5) == string[1]
        else:
            assert compiled.gettext(message) == string


@pytest.mark.parametrize(
    ("lang", "expected"), [("es", "es"), ("es_AR", "es"), ("en", "en"), ("fr", "en")]
)
def test_a_language_without_a_catalog_is_english(lang: str, expected: str) -> None:
    assert i18n.set_language(lang) == expected


def test_spanish_narration_keeps_call_names_and_uses_a_decimal_comma_in_prose() -> None:
    i18n.set_language("es")
    out = io.StringIO()
    tracer = Tracer("server", out, color=False)
    tracer.waiting(
        narration.Call("recv", ("fd 7", "65536"), "poll + recvfrom"),
        narration.blocks(narration.WHY_BYTES, 0.5),
    )
    line = out.getvalue()
    assert line.startswith("server  recv(fd 7, 65536) ...")
    assert "se bloquea hasta 0,5 s: espera bytes del otro extremo" in line
    assert "[kernel: poll + recvfrom]" in line


def spanish_session(srv: ServeProcess) -> list[str]:
    with connect(srv.address) as sock:
        sock.sendall(b"hola\n")
        assert recv_exactly(sock, 5) == b"hola\n"
    assert srv.wait_for_line("cierra 127.0.0.1:")
    srv.stop(signal.SIGTERM)
    return srv.stderr_lines


def test_serve_trace_lang_es_narrates_and_logs_in_spanish(
    serve_process: type[ServeProcess],
) -> None:
    srv = serve_process("--model", "iterative", "--port", "0", "--trace", "--lang", "es")
    lines = spanish_session(srv)
    assert any(line.startswith("listening on tcp://127.0.0.1:") for line in lines)  # as is
    recv = [line for line in lines if "recv(fd" in line and "->" in line]
    assert any("5 bytes b'hola\\n'" in line for line in recv), lines
    assert any("0 bytes: b'' (el otro extremo cerró su lado)" in line for line in recv), lines
    assert any("accept(fd" in line and "[kernel: accept4]" in line for line in lines), lines
    assert any(" abre 127.0.0.1:" in line for line in lines), lines
    assert any("detenido: 1 conexión atendida, 5 bytes devueltos" in line for line in lines)


def test_a_spanish_lang_environment_is_enough(
    serve_process: type[ServeProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "es_AR.UTF-8")  # the child copies this environment
    srv = serve_process("--model", "select", "--port", "0")
    lines = spanish_session(srv)
    assert any(" abre 127.0.0.1:" in line for line in lines), lines
    assert any("SIGTERM: deteniendo" in line for line in lines), lines


def test_the_library_speaks_english_unless_told(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sockecho")
    with Server(ServerConfig(model="selectors", port=0)) as srv:
        with connect(srv.address) as sock:
            sock.sendall(b"x")
            assert recv_exactly(sock, 1) == b"x"
        assert srv.stats.wait_for(lambda s: s.connections_closed == 1, WAIT)
    assert any(line.startswith("close 127.0.0.1:") for line in caplog.messages), caplog.messages


def test_sockecho_send_trace_lang_es_shows_the_clients_readiness_waits(
    serve_process: type[ServeProcess],
) -> None:
    srv = serve_process("--port", "0")
    host, port = srv.address
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sockecho",
            "send",
            "--port",
            str(port),
            "--trace",
            "--lang",
            "es",
            host,
            "hola",
        ],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    # The client's socket has a timeout: each wait for the echo is poll() then recvfrom().
    assert any("recv" in line and "[kernel: poll + recvfrom]" in line for line in lines), lines
    assert any("conectado" in line for line in lines), lines
