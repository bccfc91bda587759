"""A UDP echo that reads datagrams with ``recvfrom(8192)``.

recvfrom() returns at most the size it is given and discards the rest of a longer
datagram, silently. 8192 is CPython's ``socketserver.UDPServer.max_packet_size``; a UDP
datagram may carry up to 65507 bytes over IPv4.
"""

from __future__ import annotations

import socket

NAME = "udp-8192"
BUG = "a UDP echo reading with recvfrom(8192): longer datagrams come back cut to 8192 bytes"
CAUGHT_BY = "udp.size.8193"
UDP = True
BACKLOG = 0


def serve(sock: socket.socket) -> None:
    while True:
        data, address = sock.recvfrom(8192)  # the bug: the rest of a longer datagram is lost
        sock.sendto(data, address)
