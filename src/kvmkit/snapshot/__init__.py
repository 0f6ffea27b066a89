"""`kvmkit snapshot`: storage-based live VM snapshots (freeze, snapshot every disk at once, thaw)."""
