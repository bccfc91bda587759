"""``iterative``: one client at a time - the course's first exercise, done right.

How it waits
    Between clients the thread waits in a selector (epoll) over the listening
    sockets and a wake-up socketpair, not in a bare blocking ``accept()``: a
    stop request must be able to wake it (a byte on the socketpair), and a host
    name may give several listening addresses (127.0.0.1 and ::1), which one
    blocking ``accept()`` could not watch together. When a listener is
    readable, ``accept()`` takes the client from it (the listener is
    non-blocking, so a client that already left cannot stall the server).
    Then the serving part is the exercise's: only that client, with blocking
    calls - ``recv()`` blocks until bytes arrive, ``sendall()`` until they are
    all handed to the kernel - until it closes. Then back to the wait for the
    next. ``--trace`` shows it: ``epoll_wait`` → ``accept`` → ``recv`` ...
    ``sendall`` ... ``recv`` → ``b''`` → ``close``.

What it costs
    Nothing per waiting client but a slot in the kernel's listen backlog
    (``--backlog``, 4096): no thread, no buffer. One ``read_size`` buffer in all.

Where it breaks
    A second client connects at once (the kernel completes the handshake and
    queues it), and its bytes are buffered by the kernel, but it gets no echo
    until every client before it has closed. One idle client stalls everyone
    (until ``--idle-timeout``). When the backlog is full, new clients' SYNs are
    dropped and they wait in connect(). Nothing is lost: clients are served in
    the order they connected.

Stopping
    A stop shuts the listeners down (``shutdown(SHUT_RD)``) at once, even while
    a client is being served: a client that connects afterwards is refused
    (``ECONNREFUSED``), and clients still queued in the backlog are reset
    (``ECONNRESET``). The client being served gets the drain time to finish.

UDP (``--udp``)
    The UDP socket is watched beside the listeners while the thread waits for
    the next client. While a TCP client is being served, datagrams wait in the
    socket's receive buffer (and are dropped by the kernel when it is full):
    by design, this model does one thing at a time.

TLS (``--tls-cert``)
    The accepted socket is wrapped and its handshake done before the echo, with
    one deadline (``--tls-handshake-timeout``): a silent client stalls everyone
    for that long, at most.

Lifecycle::

    socket() → bind() → listen() → ┌─> epoll_wait() → accept() ──> recv() ─> sendall() ─┐
                                    │                                 ^                    │
                                    │                                 └────────────────────┘
                                    │                                  until recv() == b''
                                    └────────────────────────── close(client) <──────────┘
"""

from __future__ import annotations

from sockecho.servers.blocking import BlockingModel


class IterativeServer(BlockingModel):
    name = "iterative"
    summary = "one client at a time: wait, accept(), blocking recv()/sendall() until it closes"
    echo_datagrams_while_waiting = True
    supports_faults = False
    faults_refusal = (
        "it serves one client at a time, so holding one echo for a timer would hold every "
        "other client too"
    )

    def serve(self) -> None:
        try:
            while not self.stopping:
                accepted = self.next_client()  # waits until a client connects (or a stop)
                if accepted is None:
                    break
                conn, addr = accepted
                session = self.admit_socket(conn, addr)
                if session is not None:
                    self.echo_until_closed(conn, session)  # everyone else waits meanwhile
        finally:
            self.wait_closed()
