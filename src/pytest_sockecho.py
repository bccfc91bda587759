"""The sockecho pytest plugin: an echo server as a fixture (docs/pytest.md).

Installed with sockecho and registered through the ``pytest11`` entry point named
``sockecho``, so every pytest run in the environment loads it (``-p no:sockecho``
turns it off). It lives outside the ``sockecho`` package on purpose: importing it
costs only this file, and sockecho itself (servers, asyncio, ssl) is imported the
first time a test asks for one of these fixtures.

Fixtures:

``echo_server``
    a running server (the ``echo_server_model`` model) on 127.0.0.1, a free port,
    stopped after the test: ``.host``, ``.port``, ``.address``, ``.url``, ``.stats``.
``make_echo_server``
    a factory taking the options of ``sockecho.Server`` (``model=``, ``udp=True``,
    ``tls=True``, ``idle_timeout=``, ``max_connections=``...); every server it
    started is stopped when the test ends, whether it passed or failed.
``echo_server_tls`` / ``echo_tls_client_context``
    a TLS echo server with a certificate from a private CA (trustme), and an
    ``ssl.SSLContext`` that trusts that CA.
``echo_server_model``
    the model the fixtures use: ``asyncio``, or ``--sockecho-model NAME``, or a
    value given by ``@pytest.mark.parametrize("echo_server_model", [...], indirect=True)``
    or by a fixture of the same name in a conftest.py.
``echo_tls_certificates``
    (session) the CA and server certificate as PEM files, made once per run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import ssl

    from sockecho.testing import EchoServerFactory, RunningEchoServer, TestCertificates

#: The command-line option naming the default model (also ``dest`` below).
MODEL_OPTION = "--sockecho-model"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sockecho", "sockecho echo servers as fixtures")
    group.addoption(
        MODEL_OPTION,
        dest="sockecho_model",
        metavar="MODEL",
        default=None,
        help="the server model of the echo_server fixtures (default: asyncio; "
        "the names are those of `sockecho models`)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Reject an unknown ``--sockecho-model`` before any test runs (a usage error)."""
    name = config.getoption("sockecho_model")
    if name is None:
        return  # the common case imports nothing
    from sockecho.servers import MODELS  # noqa: PLC0415 - asked for on the command line

    if name not in MODELS:
        raise pytest.UsageError(
            f"{MODEL_OPTION}: unknown model {name!r}; choose one of: {', '.join(MODELS)}"
        )


@pytest.fixture
def echo_server_model(request: pytest.FixtureRequest) -> str:
    """The model of the echo servers in this test (see the module docstring)."""
    param = getattr(request, "param", None)
    if param is not None:
        return str(param)
    chosen = request.config.getoption("sockecho_model")
    if chosen is not None:
        return str(chosen)
    from sockecho.servers import DEFAULT_MODEL  # noqa: PLC0415 - lazy: see the docstring

    return DEFAULT_MODEL


@pytest.fixture(scope="session")
def _sockecho_certificates(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[], TestCertificates]:
    """Makes the session's CA and certificate the first time a TLS server needs them."""

    @functools.cache
    def certificates() -> TestCertificates:
        from sockecho.testing import TestCertificates  # noqa: PLC0415

        return TestCertificates.create(tmp_path_factory.mktemp("sockecho-tls"))

    return certificates


@pytest.fixture(scope="session")
def echo_tls_certificates(
    _sockecho_certificates: Callable[[], TestCertificates],
) -> TestCertificates:
    """The private CA (``.ca_file``) and the server's ``.cert_file``/``.key_file`` (PEM)."""
    return _sockecho_certificates()


@pytest.fixture
def make_echo_server(
    echo_server_model: str, _sockecho_certificates: Callable[[], TestCertificates]
) -> Iterator[EchoServerFactory]:
    """``make_echo_server(**options)`` starts a server; all are stopped after the test."""
    from sockecho.testing import EchoServerFactory  # noqa: PLC0415

    factory = EchoServerFactory(echo_server_model, _sockecho_certificates)
    yield factory
    factory.stop_all()


@pytest.fixture
def echo_server(make_echo_server: EchoServerFactory) -> RunningEchoServer:
    """A running TCP echo server on 127.0.0.1 (port 0), stopped after the test."""
    return make_echo_server()


@pytest.fixture
def echo_server_tls(make_echo_server: EchoServerFactory) -> RunningEchoServer:
    """A running TLS echo server; ``echo_tls_client_context`` trusts its certificate."""
    return make_echo_server(tls=True)


@pytest.fixture
def echo_tls_client_context(echo_tls_certificates: TestCertificates) -> ssl.SSLContext:
    """A client ``ssl.SSLContext`` that trusts the fixtures' CA and checks host names."""
    return echo_tls_certificates.client_context()
