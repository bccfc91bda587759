"""Ejercicio 2 con select: muchos clientes a la vez, en un solo hilo.
Exercise 2 with select: many clients at once, in one thread.

    python examples/select_server.py [HOST] [PORT]

select() bloquea hasta que algún socket de la lista está listo: el pasivo
(llegó un cliente: accept() no bloqueará) o uno conectado (llegaron bytes:
recv() no bloqueará). Así un cliente lento no detiene a los demás.
select() blocks until a socket in the list is ready, so one slow client does
not stop the others. Simplification: sendall() can still block if a client
does not read its echo; sockecho's select model handles that with partial sends.
"""

import select
import socket
import sys

host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 50010

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sockets = [s]  # todos los sockets a vigilar / every socket to watch
try:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(5)
    print(f"listening on tcp://{host}:{s.getsockname()[1]}", flush=True)
    while True:
        readable, _, _ = select.select(sockets, [], [])  # bloquea / blocks here only
        for sock in readable:
            if sock is s:  # el socket pasivo: hay un cliente nuevo / a new client
                conn, addr = s.accept()
                sockets.append(conn)
                continue
            try:
                data = sock.recv(1024)
                if data:
                    sock.sendall(data)
                    continue
            except OSError as e:  # reset: cerrar solo este cliente / only this client
                print(f"error: {e}", flush=True)
            sockets.remove(sock)  # b'' o error: el cliente terminó / the client is done
            sock.close()
except OSError as e:
    print(f"error en el socket: {e}", file=sys.stderr)
    sys.exit(1)
except KeyboardInterrupt:
    pass
finally:
    for sock in sockets:  # incluye el pasivo / the passive one too
        sock.close()
