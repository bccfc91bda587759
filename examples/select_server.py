"""Ejercicio 2 con select: muchos clientes a la vez, en un solo hilo.

    python examples/select_server.py [HOST] [PUERTO]

select() bloquea hasta que algún socket de la lista está listo: el pasivo (llegó un
cliente: accept() no bloqueará) o uno conectado (llegaron bytes: recv() no bloqueará).
Así, un cliente que se conecta y no envía nada no detiene a los demás.
Límite (una simplificación): sendall() bloquea si el cliente no lee su eco; uno que envía
sin leer congela el servidor entero (docs/tutorial.es.md, sección 5). El modelo select de
sockecho guarda lo pendiente de cada cliente (envíos parciales).
"""

import select
import socket
import sys
import time

FD_SETSIZE = 1024  # select() no vigila descriptores >= 1024 (Python lanza ValueError)

host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 50010

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sockets = [s]  # todos los sockets a vigilar
try:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(5)
    print(f"listening on tcp://{host}:{s.getsockname()[1]}", flush=True)  # no se traduce
    while True:
        readable, _, _ = select.select(sockets, [], [])  # bloquea solo acá
        for sock in readable:
            try:
                if sock is s:  # el socket pasivo: hay un cliente nuevo
                    conn, addr = s.accept()
                    if conn.fileno() < FD_SETSIZE:
                        sockets.append(conn)
                    else:  # select() no podría vigilarlo: rechazar solo a este cliente
                        print(f"rechazado {addr[0]}:{addr[1]}: fd {conn.fileno()}", flush=True)
                        conn.close()
                    continue
                data = sock.recv(1024)
                if data:
                    sock.sendall(data)  # bloquea si el cliente no lee (ver arriba)
                    continue
            except OSError as e:  # EMFILE en accept, reset en recv: solo ese socket
                print(f"error: {e}", flush=True)
                if sock is s:
                    time.sleep(0.1)  # el cliente sigue en la cola: no reintentar sin pausa
                    continue
            sockets.remove(sock)  # b'' o error: el cliente terminó
            sock.close()
except OSError as e:
    print(f"error en el socket: {e}", file=sys.stderr)
    sys.exit(1)
except KeyboardInterrupt:
    pass
finally:
    for sock in sockets:  # incluye el pasivo
        sock.close()
