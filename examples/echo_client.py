"""Ejercicio 1: cliente echo. Envía un mensaje y espera que vuelva entero.

    python examples/echo_client.py [HOST] [PUERTO] [MENSAJE...]

Socket activo: socket() -> connect() -> sendall() -> recv() ... -> close().
Se conecta a un socket pasivo (examples/echo_server.py o sockecho serve).
"""

import socket
import sys

host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 50010
message = (" ".join(sys.argv[3:]) or "hola").encode() + b"\n"

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.settimeout(10)  # ninguna espera es eterna: connect() y recv() fallan tras 10 s
    s.connect((host, port))  # bloquea durante el saludo TCP de tres pasos
    s.sendall(message)
    # Un recv() puede traer solo una parte: repetir hasta tener todo lo enviado.
    received = b""
    while len(received) < len(message):
        data = s.recv(1024)
        if not data:  # el servidor cerró antes de devolver todo
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
    s.close()  # el cliente cierra primero: su lado guarda TIME_WAIT, no el del servidor
