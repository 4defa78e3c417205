"""Runtimes: Supervisor programs (``supervisor``), Docker containers and Swarm services (``docker``).

Each implements ``base.Runtime``; library errors (XML-RPC faults, docker errors) are
translated into ``deployer.errors`` here and go no further. The two packages never
import each other, and outside code imports only from a package's ``__init__``.
"""
