"""Web layer: ``app`` (routes table, error handlers), ``pages``, ``api``, ``monitoring``, ``webhook``.

Beside the routes: ``auth`` (the API token), ``errors`` (status by exception type),
``serializers`` (JSON shapes), ``presenters`` and ``showcase`` (what pages show); templates are package data.
"""
