"""El socket activo del apunte (Sockets II), con sus dos líneas comentadas activadas.

    python examples/handout_client.py PUERTO

Como lo haría un estudiante: se quitó el "#" de las líneas de recv() y sendall() y el
puerto viene como argumento. Falla con NameError: el apunte copió esas líneas del
servidor, donde el socket conectado se llama conn; acá el único socket es s (y el
orden tampoco sirve: recv() antes de sendall() espera un eco de algo no enviado).
docs/tutorial.es.md, sección 4, lo muestra y lo corrige.
"""

import socket
import sys

port = int(sys.argv[1])

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)

s.connect(("localhost", port))

data = conn.recv(1024)

conn.sendall(data)

s.close()
