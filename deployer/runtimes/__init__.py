"""Runtimes: Supervisor (processes), Docker (containers), Swarm, and an in-memory fake.

Each implements ``base.Runtime``; library errors (XML-RPC faults, docker
errors) are translated into ``deployer.errors`` here and go no further.
"""
