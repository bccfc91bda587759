"""El servidor del apunte (Sockets II, "Manejo de Errores"), tal cual, con sus errores.

    python examples/handout_server.py PUERTO

Dos cambios respecto del apunte, ninguno en la lógica: el puerto viene como argumento
(el apunte usa 50010) y una línea "listening on tcp://..." avisa que ya escucha (la leen
los tests, como la de sockecho serve). No lo corrijas acá: docs/tutorial.es.md, sección 4,
muestra cada error con un comando y lo corrige línea por línea; la versión corregida es
examples/echo_server.py.
"""

import socket
import sys

port = int(sys.argv[1])

try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("0.0.0.0", port))
    s.listen(2)
    print(f"listening on tcp://0.0.0.0:{s.getsockname()[1]}", flush=True)  # agregado

    while True:
        conn, addr = s.accept()
        print(f"Conexión establecida con {addr}")

        data = conn.recv(1024)
        if not data:
            break

        conn.sendall(data)
        conn.close()

except socket.error as e:
    print(f"Error en el socket: {e}")
finally:
    s.close()
