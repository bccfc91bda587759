"""The pytest plugin, tested the way pytest tests plugins: pytester runs small suites that use it.

The plugin is installed with sockecho (the ``pytest11`` entry point), so the inner runs load it
the way a user's run does; one of them runs in a fresh process to prove exactly that.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sockecho import MODELS
from tests.conftest import REPO, WAIT

pytest_plugins = ["pytester"]


def assert_refused(address_file: Path) -> None:
    """The address a test wrote to ``address_file`` no longer accepts connections."""
    host, port = address_file.read_text().split()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=WAIT).close()


def test_a_suite_using_echo_server_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sockecho

        def test_echo(echo_server):
            assert echo_server.host == "127.0.0.1"
            assert echo_server.port > 0
            assert echo_server.address == (echo_server.host, echo_server.port)
            assert echo_server.url == f"tcp://127.0.0.1:{echo_server.port}"
            assert sockecho.echo(b"hola\\n", *echo_server.address) == b"hola\\n"
            closed = echo_server.stats.wait_for(lambda s: s.connections_closed == 1, timeout=10)
            assert closed
            assert echo_server.snapshot().bytes_echoed == 5

        def test_the_default_model_is_asyncio(echo_server, echo_server_model):
            assert echo_server_model == echo_server.model == "asyncio"
        """
    )
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=2)


@pytest.mark.timeout(120)
def test_the_plugin_loads_from_its_entry_point_without_importing_sockecho(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_nothing_imported_sockecho():
            assert "sockecho" not in sys.modules

        def test_the_fixture_is_there(echo_server):
            assert echo_server.url.startswith("tcp://127.0.0.1:")
        """
    )
    # a fresh interpreter loading pytest and its plugins: seconds on a busy machine
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=3 * WAIT)
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize("outcome", ["passes", "fails"])
def test_a_server_is_stopped_after_its_test(pytester: pytest.Pytester, outcome: str) -> None:
    address_file = pytester.path / "address.txt"
    pytester.makepyfile(
        f"""
        from pathlib import Path

        def test_uses_a_server(echo_server, make_echo_server):
            other = make_echo_server(model="threading")
            Path({str(address_file)!r}).write_text("%s %d" % echo_server.address)
            Path({str(address_file)!r} + ".2").write_text("%s %d" % other.address)
            assert {outcome == "passes"}
        """
    )
    result = pytester.runpytest_inprocess()
    if outcome == "passes":
        result.assert_outcomes(passed=1)
    else:
        result.assert_outcomes(failed=1)
    assert_refused(address_file)
    assert_refused(Path(f"{address_file}.2"))


def test_parametrizing_the_model_runs_every_model(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        import sockecho

        @pytest.mark.parametrize("echo_server_model", list(sockecho.MODELS), indirect=True)
        def test_echo(echo_server, echo_server_model):
            assert echo_server.model == echo_server_model
            assert sockecho.echo(b"x" * 1000, *echo_server.address) == b"x" * 1000
        """
    )
    result = pytester.runpytest_inprocess("-v")
    result.assert_outcomes(passed=len(MODELS))
    for name in MODELS:
        result.stdout.fnmatch_lines([f"*test_echo?{name}? PASSED*"])


def test_the_command_line_option_chooses_the_model(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_model(echo_server):
            assert echo_server.model == "select"
        """
    )
    result = pytester.runpytest_inprocess("--sockecho-model", "select")
    result.assert_outcomes(passed=1)


def test_an_unknown_model_on_the_command_line_is_a_usage_error(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_inprocess("--sockecho-model", "fork")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--sockecho-model: unknown model 'fork'; choose one of: *"])


def test_a_conftest_fixture_overrides_the_model(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def echo_server_model():
            return "selectors"
        """
    )
    pytester.makepyfile(
        """
        def test_model(echo_server, make_echo_server):
            assert echo_server.model == "selectors"
            assert make_echo_server().model == "selectors"
            assert make_echo_server(model="iterative").model == "iterative"
        """
    )
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=1)


def test_the_tls_server_is_trusted_by_the_client_context(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import ssl
        import pytest
        import sockecho

        def test_tls(echo_server_tls, echo_tls_client_context):
            assert echo_server_tls.url == f"tls://127.0.0.1:{echo_server_tls.port}"
            reply = sockecho.echo(b"secret", *echo_server_tls.address, tls=echo_tls_client_context)
            assert reply == b"secret"

        def test_an_untrusting_client_is_refused(echo_server_tls):
            with pytest.raises(sockecho.ConnectError, match="not trusted"):
                sockecho.echo(b"x", *echo_server_tls.address, tls=ssl.create_default_context())

        def test_the_certificate_names_localhost(make_echo_server, echo_tls_client_context):
            server = make_echo_server(tls=True, model="threading")
            reply = sockecho.echo(b"x", "localhost", server.port, tls=echo_tls_client_context)
            assert reply == b"x"
        """
    )
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=3)


def test_the_factory_takes_the_options_of_server(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket
        import sockecho

        def test_udp_and_limits(make_echo_server):
            server = make_echo_server(model="selectors", udp=True, max_connections=1)
            assert server.config.max_connections == 1
            assert server.udp_url == f"udp://127.0.0.1:{server.udp_address[1]}"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(10)
                sock.sendto(b"ping", server.udp_address)
                assert sock.recvfrom(100)[0] == b"ping"

        def test_a_config_object(make_echo_server):
            config = sockecho.ServerConfig(model="iterative", port=0, idle_timeout=2)
            server = make_echo_server(config)
            assert server.config == config
            assert sockecho.echo(b"x", *server.address) == b"x"

        def test_the_operations_options_pass_through(make_echo_server):
            server = make_echo_server(faults=("latency=100:20",), seed=7, identify="alpha")
            assert server.config.faults == ("latency=100:20",)
            assert server.config.seed == 7
            assert server.config.identify == "alpha"

        def test_bad_options_are_config_errors(make_echo_server):
            import pytest
            with pytest.raises(sockecho.ConfigError):
                make_echo_server(max_connections=0)
        """
    )
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=4)


def test_the_complete_example_in_the_docs_passes(pytester: pytest.Pytester) -> None:
    text = (REPO / "docs" / "pytest.md").read_text()
    section = text.split("## A complete example", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    pytester.makepyfile(test_flaky_network=example)
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=example.count("\ndef test_"))
