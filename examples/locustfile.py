"""Echo load on Locust: every user keeps one connection and checks every byte of every echo.

    sockecho serve --port 50010 &
    locust -f examples/locustfile.py --host tcp://127.0.0.1:50010 --headless -u 50 -r 10 -t 30s

``--host`` may also be ``udp://HOST:PORT`` or ``tls://HOST:PORT``. Across machines, one
``--master`` and any number of ``--worker --master-host MASTER`` run this same file
(docs/locust.md). Needs ``pip install 'sockecho[locust]'``.
"""

from locust import between, task

from sockecho.locust import EchoUser


class Echoer(EchoUser):
    """Mostly small messages, like a chatty protocol; sometimes a larger block."""

    wait_time = between(0.01, 0.05)  # seconds between tasks, per user

    @task(10)
    def small_message(self) -> None:
        self.client.echo(64)

    @task(1)
    def block(self) -> None:
        self.client.echo(16 * 1024, name="echo 16 KiB")
