"""Storage drivers: one module per storage, registered in `registry.py`."""
