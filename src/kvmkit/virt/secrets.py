"""Keys held in libvirt secrets: how CloudStack and Nova give QEMU a cephx key, and so where kvmkit finds it too.

A cloud host often has no ceph.conf and no keyring file: the RBD disk's `<auth username=…><secret type='ceph'
uuid=…/>` names a libvirt secret, and that secret's value is the raw key. Keys stay in memory: never written,
logged or put in an error message.
"""

from __future__ import annotations

import base64

import libvirt

from kvmkit.errors import EnvironmentProblem, NotFound
from kvmkit.virt.connection import connection


def ceph_key(uri: str, secret_uuid: str, user: str) -> str:
    """The base64 cephx key of `client.<user>` held in the libvirt secret `secret_uuid` on `uri`."""
    with connection(uri) as conn:
        try:
            secret = conn.secretLookupByUUIDString(secret_uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                raise NotFound(f"the libvirt secret {secret_uuid} that holds client.{user}'s Ceph key does not "
                               f"exist on {uri}") from exc
            raise EnvironmentProblem(f"libvirt secret {secret_uuid}: {exc.get_error_message()}") from exc
        try:
            value = secret.value()
        except libvirt.libvirtError as exc:
            raise EnvironmentProblem(
                f"the libvirt secret {secret_uuid} holding client.{user}'s Ceph key is private, so kvmkit cannot "
                f"read it: set [ceph] keyring to a keyring file with client.{user}'s key, or define the secret "
                "with private='no'") from exc
    return base64.b64encode(value).decode()
