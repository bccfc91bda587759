"""Ejercicio 1: servidor echo bloqueante, un cliente a la vez.
Exercise 1: a blocking echo server, one client at a time.

    python examples/echo_server.py [HOST] [PORT]      (PORT 0: el núcleo elige / the kernel picks)

Socket pasivo: socket() -> bind() -> listen() -> accept(). Cada accept() devuelve
un socket nuevo, conectado al cliente; el pasivo sigue escuchando.
Passive socket: each accept() returns a new socket connected to one client.
"""

import socket
import sys

host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 50010

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    # Reusar el puerto aunque queden conexiones viejas en TIME_WAIT (restart at once).
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(5)  # hasta 5 conexiones esperando en cola / up to 5 queued connections
    print(f"listening on tcp://{host}:{s.getsockname()[1]}", flush=True)
    while True:
        conn, addr = s.accept()  # bloquea hasta que llega un cliente / blocks
        print(f"conexión de {addr[0]}:{addr[1]}", flush=True)
        try:
            while True:
                # recv puede devolver menos bytes de los que el cliente envió de una vez.
                # recv may return fewer bytes than the client sent in one call.
                data = conn.recv(1024)
                if not data:  # b'': el cliente cerró su lado / the client closed its side
                    break
                conn.sendall(data)  # send() puede enviar una parte; sendall() envía todo
        except OSError as e:  # reset, broken pipe: perdemos este cliente, no el servidor
            print(f"error con {addr[0]}:{addr[1]}: {e}", flush=True)
        finally:
            conn.close()  # mientras tanto, los demás clientes esperaban / others waited
except OSError as e:  # p. ej. "Address already in use" en bind()
    print(f"error en el socket: {e}", file=sys.stderr)
    sys.exit(1)
except KeyboardInterrupt:  # Ctrl-C: terminar limpiamente / stop cleanly
    pass
finally:
    s.close()
