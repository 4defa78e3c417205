"""A very cheap service for the scale benchmark: answers GET /health and GET /info on PORT.

Standard library ``socket`` only (no http.server, so a few MB per process): one request at a
time, HTTP/1.0, connection closed after each answer. Run as ``python -I -S tiny.py --port N``.
``/info`` says how many ``/health`` requests it answered: the bench counts the daemon's probes
from the services' side, without reaching into the daemon.
"""

import os
import socket
import sys


def main() -> None:
    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1]) if "--port" in args else int(os.environ["PORT"])
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(64)
    print(f"tiny listening on {port}", flush=True)
    health_hits = 0
    while True:
        conn, _ = server.accept()
        try:
            conn.settimeout(2.0)
            request = conn.recv(4096)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path.startswith(b"/health"):
                health_hits += 1
                status, body = b"200 OK", b'{"status": "ok"}'
            elif path.startswith(b"/info"):
                status, body = b"200 OK", b'{"name": "tiny", "port": %d, "health_hits": %d}' % (port, health_hits)
            else:
                status, body = b"404 Not Found", b'{"error": "not found"}'
            conn.sendall(b"HTTP/1.0 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        except OSError:
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    main()
