"""Host facts read from /proc."""

from __future__ import annotations

import os
import socket

from deployer.host import listening_tcp_sockets, socket_inodes


def test_listening_ports_are_read_from_the_kernels_tables() -> None:
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.bind((address, 0))
            port = listener.getsockname()[1]
            assert port not in (listening_tcp_sockets() or {})  # bound, not listening
            listener.listen()
            assert port in (listening_tcp_sockets() or {})
        assert port not in (listening_tcp_sockets() or {})


def test_a_listeners_socket_inode_names_the_process_holding_it() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        inodes = (listening_tcp_sockets() or {}).get(port, set())
        assert len(inodes) == 1
        assert inodes <= socket_inodes(os.getpid())
    assert port not in (listening_tcp_sockets() or {})
    assert socket_inodes(2**22 + 12345) == set()  # no such process: nothing, no error
