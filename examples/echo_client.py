"""Ejercicio 1: cliente echo. Envía un mensaje y espera que vuelva entero.
Exercise 1: the echo client. Sends a message and waits for all of it to come back.

    python examples/echo_client.py [HOST] [PORT] [MESSAGE...]

Socket activo: socket() -> connect() -> sendall() -> recv() ... -> close().
Active socket: it connects to a passive one.
"""

import socket
import sys

host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 50010
message = (" ".join(sys.argv[3:]) or "hola").encode() + b"\n"

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.settimeout(10)  # no esperar para siempre / never wait forever
    s.connect((host, port))  # bloquea: el saludo TCP de tres pasos / the handshake
    s.sendall(message)
    # Un recv() puede traer solo una parte: repetir hasta tener todo lo enviado.
    # One recv() may bring only part of it: repeat until everything came back.
    received = b""
    while len(received) < len(message):
        data = s.recv(1024)
        if not data:  # el servidor cerró antes de devolver todo / closed early
            break
        received += data
    print(received.decode(errors="replace"), end="", flush=True)
    if received != message:
        print(f"eco incompleto: {len(received)} de {len(message)} bytes", file=sys.stderr)
        sys.exit(1)
except OSError as e:  # ConnectionRefusedError: no hay servidor en ese puerto
    print(f"error en el socket: {e}", file=sys.stderr)
    sys.exit(1)
finally:
    s.close()
