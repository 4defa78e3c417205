"""Host facts read from /proc."""

from __future__ import annotations

import socket

from deployer.host import listening_tcp_ports


def test_listening_ports_are_read_from_the_kernels_tables() -> None:
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.bind((address, 0))
            port = listener.getsockname()[1]
            assert port not in (listening_tcp_ports() or set())  # bound, not listening
            listener.listen()
            assert port in (listening_tcp_ports() or set())
        assert port not in (listening_tcp_ports() or set())
