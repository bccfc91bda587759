"""Ejercicio 2 con hilos: un hilo por cliente.
Exercise 2 with threads: one thread per client.

    python examples/threading_server.py [HOST] [PORT]

El hilo principal solo acepta; cada cliente tiene su hilo, que bloquea en
recv()/sendall() como en el ejercicio 1 sin detener a los demás.
The main thread only accepts; each client's thread blocks in recv()/sendall()
exactly as in exercise 1, without stopping the others. Cost: a thread (and its
stack) per connected client.
"""

import socket
import sys
import threading

host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 50010


def serve_client(conn: socket.socket, addr: tuple[str, int]) -> None:
    """El eco de un cliente, en su propio hilo / one client's echo, in its own thread."""
    try:
        while data := conn.recv(1024):  # b'': el cliente cerró / the client closed
            conn.sendall(data)
    except OSError as e:  # un error termina este cliente, no el servidor
        print(f"error con {addr[0]}:{addr[1]}: {e}", flush=True)
    finally:
        conn.close()


s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(5)
    print(f"listening on tcp://{host}:{s.getsockname()[1]}", flush=True)
    while True:
        conn, addr = s.accept()
        # daemon: un cliente colgado no impide terminar con Ctrl-C / never blocks exit
        threading.Thread(target=serve_client, args=(conn, addr), daemon=True).start()
except OSError as e:
    print(f"error en el socket: {e}", file=sys.stderr)
    sys.exit(1)
except KeyboardInterrupt:
    pass
finally:
    s.close()
