"""Un cliente que envía sin leer nunca su eco: el límite de examples/select_server.py.

    python examples/nonreading_client.py [HOST] [PUERTO]

Envía bloques de 64 KiB y nunca llama a recv(). El servidor devuelve el eco, pero nadie
lo lee: se llena el búfer de recepción de este cliente, después el de envío del servidor,
y el sendall() del servidor bloquea. Un servidor de un solo hilo que bloquea ahí deja de
atender a todos. Cuando este cliente tampoco puede enviar más (1 s sin lugar en su búfer),
lo dice y queda conectado, sin leer, hasta Ctrl-C.
"""

import socket
import sys
import threading

host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 50010
block = b"x" * 65536

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sent = 0
try:
    s.connect((host, port))
    s.settimeout(1)  # send() espera lugar en el búfer hasta 1 s; después, TimeoutError
    try:
        while True:
            sent += s.send(block)  # puede enviar solo una parte: cuenta lo que tomó
    except TimeoutError:
        print(f"bloqueado tras enviar {sent} bytes sin leer el eco", flush=True)
    threading.Event().wait()  # conectado y sin leer, hasta Ctrl-C
except OSError as e:
    print(f"error en el socket: {e}", file=sys.stderr)
    sys.exit(1)
except KeyboardInterrupt:  # Ctrl-C: close() con datos sin leer envía un RST al servidor
    pass
finally:
    s.close()
