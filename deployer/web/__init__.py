"""Web layer: webhook receiver, status page, JSON API, metrics."""
