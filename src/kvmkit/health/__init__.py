"""Snapshot and backup health for Prometheus: records read without locking (records.py), the failure log kvmkit
appends to (events.py) and the custom collector the exporter registers (metrics.py)."""
