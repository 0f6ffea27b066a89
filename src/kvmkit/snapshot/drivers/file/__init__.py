"""The file driver, as a package: everything kvmkit does to raw/qcow2 disk files lives here.

  driver.py         FileDriver: the StorageDriver contract (plan, snapshot by reflink, revert by clone + rename),
                    and the BarrierSnapshots ability the engine calls for disks a reflink would hold frozen too long
  reflink.py        FICLONE, and whether a folder's filesystem can do it
  overlay.py        the O(1) overlay barrier: qcow2 overlays switched to inside the freeze, committed back after
  bitmaps.py        QEMU dirty bitmaps for disks on filesystems without reflink (started by the barrier)
  bitmap_export.py  reading a dirty bitmap through QEMU's NBD export (what changed since a snapshot)

The engine reaches none of these modules directly: it calls the driver (`plan`, `snapshot`, `prepare_barrier`,
`finish_barrier`), so an RBD disk never passes through file code and a file disk never through RBD code.
"""

from kvmkit.snapshot.drivers.file.driver import OWNER_XATTR, SUFFIX, SUPPORTED_FORMATS, FileDriver, sparse_copy
from kvmkit.snapshot.drivers.file.reflink import FICLONE, NO_REFLINK, reflink, supports_reflink

__all__ = ["FICLONE", "NO_REFLINK", "OWNER_XATTR", "SUFFIX", "SUPPORTED_FORMATS", "FileDriver", "reflink",
           "sparse_copy", "supports_reflink"]
