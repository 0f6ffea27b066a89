"""Hypothesis fuzzing of every input kvmkit reads back or is handed (issue 15 item 6): manifests, chunk blobs,
repositories as a whole, config files, plan files, tune profiles, CLI names.

The properties: only kvmkit's own one-line errors come out (never another exception, so never a traceback), no
file outside the repository or state dir is written or removed, and memory stays bounded (tracemalloc peak)."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmkit import config
from kvmkit.backup import codec, manage, restore
from kvmkit.backup.model import BackupManifest
from kvmkit.backup.retention import RetentionPolicy
from kvmkit.backup.store import ChunkStore, DirTarget, ManifestDamaged, manifest_key
from kvmkit.config import BackupTarget, Settings
from kvmkit.errors import KvmkitError
from kvmkit.names import check_snapshot_name, check_vm_name

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
UUID = "00000000-0000-4000-8000-000000000001"
HEX = "0123456789abcdef"
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                      st.floats(allow_nan=True), st.text(max_size=80),
                      st.sampled_from(["../../x", "/dev/zero", "-rf", "", "a" * 64, "0" * 64, UUID]))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=5) |
                          st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=30)


def valid_manifest() -> dict:
    return {"format": 2, "vm": "vm1", "vm_uuid": UUID, "snapshot": "s1", "snapshot_created": "2026-01-01T00:00:00",
            "created": "2026-01-01T00:00:00", "parent": None, "target": "t1", "chunk_size": 1 << 20,
            "compression": "zstd", "disks": [{"target": "vda", "driver": "file", "source": "/srv/vm1.raw",
                                              "handle": "/srv/vm1.raw@s1", "size_bytes": 4 << 20, "full": True,
                                              "chunks": [[0, "a" * 64], [2, "b" * 64]],
                                              "content_digest": "c" * 64}]}


def paths_of(data: dict) -> list[tuple]:
    out: list[tuple] = []

    def walk(node, path):
        out.append(path)
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*path, key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, (*path, index))
    walk(data, ())
    return out[1:]


def mutate(data: dict, path: tuple, value) -> dict:
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def tree(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path)] = "link"
        elif path.is_file():
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[str(path)] = "dir"
    return out


@pytest.fixture()
def repo(tmp_path: Path):
    """A repository with one real good backup (vm0), an outside folder that must never change, and settings."""
    from tests.backup.conftest import file_snapshot, sparse_file

    root = tmp_path / "repo"
    root.mkdir()
    # a repository without keys (format 1): the strict model is all that stands between it and kvmkit; keyed
    # repositories refuse any manifest or chunk not sealed by their key before parsing it (tests/backup/test_tamper)
    (root / "kvmkit-backup.json").write_text(json.dumps({"format": 1, "tool": "kvmkit"}))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    s = Settings(state_dir=tmp_path / "state", libvirt_uri="test:///default",
                 backup_targets=[BackupTarget(name="t1", path=root)])
    from kvmkit.backup.create import backup_snapshot

    disk = sparse_file(tmp_path / "d.raw", 2 << 20, [(0, os.urandom(4096))])
    backup_snapshot(s, file_snapshot("s0", {"vda": disk}, vm="vm0"))
    return s, root, outside


@FUZZ
@given(data=st.data())
def test_a_mutated_manifest_is_either_the_strict_model_or_one_damaged_entry(repo, data):
    s, root, outside = repo
    manifest = valid_manifest()
    path = data.draw(st.sampled_from(paths_of(manifest)))
    value = data.draw(json_value)
    blob = json.dumps(mutate(manifest, path, value)).encode()
    key = manifest_key(UUID, "s1")
    store = DirTarget("t1", root)
    store._put(key, blob)
    try:
        parsed = store._read_manifest(key)
    except ManifestDamaged as exc:
        assert "\n" not in exc.problem
        parsed = None
    if parsed is not None:  # whatever got through is safe to turn into paths
        assert manifest_key(parsed.vm_uuid, parsed.snapshot) == key
        for disk in parsed.disks:
            assert all(d is None or (len(d) == 64 and set(d) <= set(HEX)) for _, d in disk.chunks)
    before = tree(outside)
    good, damaged = manage.list_backups(s)
    assert [m.vm for m in good if m.vm == "vm0"] == ["vm0"]  # the good backup is never hidden
    assert (key in [d.key for d in damaged]) == (parsed is None)  # a bad one is listed as damaged, once
    assert tree(outside) == before


@FUZZ
@given(blob=st.binary(max_size=4096) | st.builds(lambda tail: codec.MAGIC + tail, st.binary(max_size=4096)),
       limit=st.integers(min_value=0, max_value=1 << 20))
def test_any_chunk_blob_decodes_to_its_id_or_is_damaged_within_its_limit(blob, limit):
    digest = hashlib.sha256(b"anything").hexdigest()
    try:
        raw = codec.decode(digest, blob, lambda _base: bytes(64), limit)
    except codec.ChunkDamaged:
        return
    assert hashlib.sha256(raw).hexdigest() == digest and len(raw) <= limit


@FUZZ
@given(kind=st.sampled_from(["bytes", "symlink", "fifo", "folder", "huge"]), blob=st.binary(max_size=2048))
def test_any_planted_chunk_file_is_damaged_or_verified_never_followed(repo, kind, blob):
    s, root, outside = repo
    store = DirTarget("t1", root)
    manifest = store.manifests()[0]
    digest = manifest.disks[0].chunks[0][1]
    path = root / "chunks" / digest[:2] / digest
    saved = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)
    if kind == "bytes":
        path.write_bytes(blob)
    elif kind == "symlink":
        path.symlink_to(outside / "keep")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        with path.open("wb") as fh:
            fh.truncate(1 << 30)
    before = tree(outside)
    report = restore.verify(s, "vm0")
    assert report.damaged and report.damaged[0].chunk == digest
    with pytest.raises(KvmkitError):
        restore.restore(s, "vm0", "s0", to=[str(outside / "restored")])
    assert tree(outside) == before
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink()
    assert saved is not None
    path.write_bytes(saved)


@FUZZ
@given(data=st.data())
def test_delete_and_prune_on_a_fuzzed_repository_touch_nothing_outside_it(repo, data):
    s, root, outside = repo
    manifest = valid_manifest()
    path = data.draw(st.sampled_from(paths_of(manifest)))
    evil = mutate(manifest, path, data.draw(json_value))
    folder = root / "manifests" / data.draw(st.sampled_from([UUID, "x", "..%2f"]))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "s1.json").write_text(json.dumps(evil))
    before = tree(outside)
    for call in (lambda: manage.delete(s, "vm1", "s1"), lambda: manage.prune(s, "vm1", RetentionPolicy(keep_last=1)),
                 lambda: restore.verify(s, "vm1"), lambda: restore.restore(s, "vm1", "s1", to=[str(outside / "r")])):
        try:
            call()
        except KvmkitError as exc:
            assert "\n" not in str(exc)
    assert tree(outside) == before
    assert restore.verify(s, "vm0").ok  # the good backup still verifies


@FUZZ
@given(text=st.text(max_size=400) | st.sampled_from([
    'libvirt_uri = "qemu+ext:///system?command=/bin/sh"\nstate_dir = 5',
    "a = " + "[" * 3000 + "]" * 3000, 'backup_targets = [{name = "x", kind = "nfs"}]', "[ceph]\nconf = 1\n"]))
def test_any_config_text_loads_or_is_one_line(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    path.chmod(0o600)
    try:
        config.load(path, env={})
    except KvmkitError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(doc=json_value, suffix=st.sampled_from([".toml", ".yaml", ".json"]))
def test_any_plan_document_loads_or_is_one_line(tmp_path, doc, suffix):
    from kvmkit.plan.loader import load_plan

    path = tmp_path / f"plan{suffix}"
    if suffix == ".toml":
        path.write_text("\n".join(f"{k!r} = {json.dumps(v)}" for k, v in (doc.items() if isinstance(doc, dict)
                                                                             else [("x", doc)])))
    else:
        path.write_text(json.dumps(doc))
    try:
        load_plan(path)
    except KvmkitError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(doc=json_value)
def test_any_tune_profile_loads_or_is_one_line(tmp_path, doc):
    from kvmkit.tune.profiles import _parse_file

    path = tmp_path / "p.toml"
    items = doc.items() if isinstance(doc, dict) else [("checks", doc)]
    path.write_text("\n".join(f"{json.dumps(str(k))} = {json.dumps(v)}" for k, v in items))
    try:
        _parse_file(path)
    except KvmkitError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(name=st.text(max_size=200))
def test_a_name_that_passes_is_safe_in_a_path_and_on_a_command_line(name):
    for check in (check_vm_name, check_snapshot_name):
        try:
            good = check(name)
        except KvmkitError as exc:
            assert "\n" not in str(exc).replace(repr(name), "")
            continue
        assert good and not good.startswith(("-", ".")) and "/" not in good and "\x00" not in good
        assert Path("/base", good).parent == Path("/base")


def test_parsing_the_largest_manifest_allowed_stays_within_its_memory_bound(tmp_path):
    """A manifest just under the byte limit, of the cheapest entries to parse, peaks far below a gigabyte."""
    from kvmkit.backup.store import MAX_MANIFEST_BYTES

    count = (MAX_MANIFEST_BYTES - 4096) // len('[9999999,"' + "0" * 64 + '"],')
    data = valid_manifest()
    data["disks"][0]["size_bytes"] = count << 20
    head, tail = json.dumps(data).split('"chunks": ', 1)
    body = "[" + "".join(f'[{i},"{i:064x}"],' for i in range(count))[:-1] + "]"
    blob = (head + '"chunks": ' + body + tail.split("]]", 1)[1]).encode()
    assert len(blob) <= MAX_MANIFEST_BYTES
    del body
    tracemalloc.start()
    try:
        BackupManifest.model_validate_json(blob)
    except ValueError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"peak {peak / 2**20:.0f} MiB for {len(blob) / 2**20:.0f} MiB of manifest")
    assert peak < 1 << 30, peak


def test_chunk_store_reads_are_bounded_before_reading(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    store: ChunkStore = DirTarget("t1", root)
    digest = "f" * 64
    path = root / "chunks" / "ff" / digest
    path.parent.mkdir(parents=True)
    with path.open("wb") as fh:
        fh.truncate(8 << 30)  # 8 GiB sparse: read whole it would take 8 GiB
    tracemalloc.start()
    with pytest.raises(codec.ChunkDamaged, match="more than"):
        store.get_chunk(digest)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20
