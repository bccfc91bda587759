"""Ejercicio 1: servidor echo bloqueante, un cliente a la vez.

    python examples/echo_server.py [HOST] [PUERTO]      (PUERTO 0: el núcleo elige uno libre)

Socket pasivo: socket() -> bind() -> listen() -> accept(). Cada accept() devuelve
un socket nuevo, conectado al cliente; el pasivo sigue escuchando. Es el servidor
del apunte corregido, línea por línea, en docs/tutorial.es.md (sección 4).
"""

import socket
import sys
import time

host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 50010

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # fuera del try: `s` existe en finally
try:
    # Quien cierra primero guarda TIME_WAIT; este servidor cierra primero si el cliente
    # no lo hace: con SO_REUSEADDR puede volver a escuchar enseguida en el mismo puerto.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    # La cola de conexiones ya establecidas que nadie aceptó: en Linux entran 5 + 1; a las
    # siguientes el núcleo no las rechaza, ignora su SYN y su connect() espera.
    s.listen(5)
    # La línea que leen los scripts y los tests (la misma de sockecho serve): no se traduce.
    print(f"listening on tcp://{host}:{s.getsockname()[1]}", flush=True)
    while True:
        try:
            conn, addr = s.accept()  # bloquea hasta que llega un cliente
        except OSError as e:  # EMFILE (sin descriptores libres): el servidor sigue
            print(f"error en accept: {e}", flush=True)
            time.sleep(0.1)  # el cliente sigue en la cola: no reintentar sin pausa
            continue
        print(f"conexión de {addr[0]}:{addr[1]}", flush=True)
        try:
            while True:
                data = conn.recv(1024)  # hasta 1024 bytes: lo que haya llegado
                if not data:  # b'': el cliente cerró su lado; termina ESTE cliente
                    break
                conn.sendall(data)  # send() puede enviar una parte; sendall() envía todo
        except OSError as e:  # reset, tubería rota: perdemos este cliente, no el servidor
            print(f"error con {addr[0]}:{addr[1]}: {e}", flush=True)
        finally:
            conn.close()  # mientras tanto, los demás clientes esperaban en la cola
except OSError as e:  # p. ej. "Address already in use" en bind()
    print(f"error en el socket: {e}", file=sys.stderr)
    sys.exit(1)
except KeyboardInterrupt:  # Ctrl-C: terminar limpiamente
    pass
finally:
    s.close()
