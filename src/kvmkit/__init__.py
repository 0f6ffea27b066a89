"""kvmkit: storage-based live VM snapshots and measured performance tooling for KVM clouds."""

__version__ = "0.1.0"
