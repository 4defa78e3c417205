"""Pure values with no I/O: the manifest, desired and actual services, plans, status.

Nothing here imports a runtime library (pydantic aside), so every layer above
can depend on these shapes.
"""
