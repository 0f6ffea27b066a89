"""A prune or delete on one host must not remove a backup that became another backup's parent after the prune
listed the VM's backups (the writer finished and dropped its lease in between): the soak found one such broken
chain. Right before each removal: leases, then a fresh listing, then the removal, within a bound."""

from __future__ import annotations

from kvmkit.backup import manage
from kvmkit.backup.targets import open_target
from tests.backup.test_backup_cli import two_backups


def test_a_backup_another_one_now_builds_on_is_not_removed(tmp_path):
    (tmp_path / "target").mkdir()
    settings = two_backups(tmp_path)
    target = open_target(settings, "nfs1")
    manifests, _ = target.scan_manifests(headers=True)
    by_name = {m.snapshot: m for m in manifests}
    assert by_name["s2"].parent == "s1"  # s2 is an incremental on s1
    assert not manage.still_unneeded(target, by_name["s1"], {"s1"})  # s2 needs it: it stays
    assert manage.still_unneeded(target, by_name["s1"], {"s1", "s2"})  # both go: children first
    assert manage.still_unneeded(target, by_name["s2"], {"s2"})


def test_a_prune_that_listed_before_the_child_existed_keeps_the_parent(tmp_path, monkeypatch):
    (tmp_path / "target").mkdir()
    settings = two_backups(tmp_path)
    target = open_target(settings, "nfs1")
    only_the_parent = [m for m in target.scan_manifests(headers=True)[0] if m.snapshot == "s1"]
    # the prune's listing happened before s2 was written, and its rules keep nothing: it would delete s1
    monkeypatch.setattr(manage, "vm_manifests", lambda *_a, **_k: list(only_the_parent))
    from kvmkit.backup import retention

    monkeypatch.setattr(retention, "keep", lambda items, policy: {})
    removal = manage.prune(settings, "vm1", retention.RetentionPolicy(1, 0, 0, 0), "nfs1")
    assert removal.deleted == [] and "ran during the prune" in removal.kept["s1"]
    left = {m.snapshot for m in target.scan_manifests(headers=True)[0]}
    assert left == {"s1", "s2"}
