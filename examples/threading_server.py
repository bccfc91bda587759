"""Ejercicio 2 con hilos: un hilo por cliente.

    python examples/threading_server.py [HOST] [PUERTO]

El hilo principal solo acepta; cada cliente tiene su hilo, que bloquea en
recv()/sendall() como en el ejercicio 1 sin detener a los demás. Costo: un hilo
(y su pila) por cliente conectado.
"""

import socket
import sys
import threading
import time

host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 50010


def serve_client(conn: socket.socket, addr: tuple[str, int]) -> None:
    """El eco de un cliente, en su propio hilo."""
    try:
        while data := conn.recv(1024):  # b'': el cliente cerró
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
    print(f"listening on tcp://{host}:{s.getsockname()[1]}", flush=True)  # no se traduce
    while True:
        try:
            conn, addr = s.accept()
        except OSError as e:  # EMFILE (sin descriptores libres): el servidor sigue
            print(f"error en accept: {e}", flush=True)
            time.sleep(0.1)  # el cliente sigue en la cola: no reintentar sin pausa
            continue
        # daemon: un cliente colgado no impide terminar con Ctrl-C
        threading.Thread(target=serve_client, args=(conn, addr), daemon=True).start()
except OSError as e:
    print(f"error en el socket: {e}", file=sys.stderr)
    sys.exit(1)
except KeyboardInterrupt:
    pass
finally:
    s.close()
