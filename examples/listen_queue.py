"""La cola de listen(): cuántos clientes entran si el servidor nunca llama a accept().

    python examples/listen_queue.py HOST PUERTO BACKLOG CLIENTES

Escucha con listen(BACKLOG) y no acepta a nadie; después conecta CLIENTES clientes,
uno por uno, cada uno con 1,5 s de plazo para connect(), y dice qué le pasó a cada uno.
(docs/lab.es.md, ejercicio 1.)
"""

import socket
import sys
import time

host, port = sys.argv[1], int(sys.argv[2])
backlog, clients = int(sys.argv[3]), int(sys.argv[4])

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
connected = []
try:
    s.bind((host, port))
    s.listen(backlog)  # el servidor no llama nunca a accept()
    print(f"listen({backlog}) en {host}:{s.getsockname()[1]}, sin accept()", flush=True)
    for number in range(1, clients + 1):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.settimeout(1.5)
        started = time.monotonic()
        try:
            c.connect(s.getsockname())
            connected.append(c)
            result = "conectado"
        except OSError as e:  # TimeoutError: el núcleo ignoró el SYN (cola llena)
            c.close()
            result = f"{type(e).__name__}: {e}"
        took = f"{time.monotonic() - started:.1f}".replace(".", ",")
        print(f"cliente {number}: {result} ({took} s)", flush=True)
except OSError as e:
    print(f"error en el socket: {e}", file=sys.stderr)
    sys.exit(1)
finally:
    for c in connected:
        c.close()
    s.close()
