"""Backup of snapshots to secondary storage: chunked, deduplicated, incremental, verified on restore."""
