"""The FAKE StorPool API lives in the product (kvmkit.benchmarks.storpool_fake: the bench and the lab run it);
tests import it from here too."""

from kvmkit.benchmarks.storpool_fake import FakeApiError, FakeStorPoolApi, running

__all__ = ["FakeApiError", "FakeStorPoolApi", "running"]
