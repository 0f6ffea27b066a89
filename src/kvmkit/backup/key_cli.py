"""`kvmkit backup target init --encryption …` and `kvmkit backup key export | import | passwd`: a target's keys.

A passphrase is never an argument: it comes from the target's passphrase_file / passphrase_env / systemd
credential, or a prompt on a terminal (`key passwd` reads the new one from --new-passphrase-file or a prompt).
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

import typer

from kvmkit import config
from kvmkit.backup import keyring
from kvmkit.backup import keys as K
from kvmkit.backup.targets import open_target, target_config
from kvmkit.errors import InvalidInput
from kvmkit.output import console, print_json

key_app = typer.Typer(no_args_is_help=True, help="A backup target's keys (export a copy: a lost key is lost backups).")
NAME = typer.Argument(None, help="Target (default: the only one configured).")
JSON = typer.Option(False, "--json", help="Print JSON.")


def mount(app: typer.Typer, target_app: typer.Typer) -> None:
    """Hang these commands (and `backup soak`) on `kvmkit backup` (called from backup/cli.py)."""
    target_app.command("init")(target_init)
    app.add_typer(key_app, name="key")
    app.command("soak")(soak_command)


def soak_command(folder: Path = typer.Argument(..., help="Scratch folder for the hosts' images and state (made)."),
                 target: str | None = typer.Option(None, "--target", "-t", help="Backup target (default: the only "
                                                   "one). Use a scratch target: the soak prunes its own VMs only."),
                 seconds: float = typer.Option(300.0, "--seconds", help="How long the hosts run."),
                 writers: int = typer.Option(4, "--writers", help="Writer hosts (processes with own host ids)."),
                 pruners: int = typer.Option(2, "--pruners", help="Hosts looping prune and delete."),
                 kill_every: float = typer.Option(15.0, "--kill-every", help="Mean seconds between kill -9s."),
                 json_out: bool = JSON) -> None:
    """Many hosts backing up to and pruning one repository with random kill -9, then every backup verified and
    restored byte for byte; exit 1 if anything was lost."""
    from kvmkit.backup import soak
    from kvmkit.backup.targets import target_config

    settings = config.load()
    name = target_config(settings, target).name
    result = soak.run(settings, name, folder, seconds, writers, pruners, kill_every,
                      say=lambda m: console.print(f"[dim]soak:[/] {m}") if not json_out else None)
    if json_out:
        print_json(soak.as_dict(result))
    else:
        console.print(f"{result.backups} backups ({result.backup_failures} refused), {result.prunes} prunes, "
                      f"{result.deletes} deletes ({result.refusals} refused), {result.kills} kill -9; "
                      f"{result.checked} backups verified and restored byte for byte; "
                      f"{len(result.mismatched)} mismatched, {len(result.damaged)} damaged")
    if not result.ok:
        raise typer.Exit(1)


def _describe(store) -> dict:
    keys = store.keys
    return {"target": store.name, "location": store.location, "ready": True,
            "encryption": keys.mode if keys is not None else "legacy",
            "repo_id": keys.repo_id if keys is not None else None,
            "fingerprint": K.fingerprint(keys) if keys is not None else None}


def target_init(name: str | None = NAME,
                encryption: str = typer.Option("repokey", "--encryption",
                                               help="repokey (key in the repository, wrapped by the passphrase), "
                                                    "keyfile (key only on the hosts) or none (manifests MACed by a "
                                                    "host key, data in the clear)."),
                json_out: bool = JSON) -> None:
    """Make the target's folder or S3 bucket if missing, with its keys and format marker; running it again is safe."""
    if encryption not in K.MODES:
        raise InvalidInput(f"--encryption {encryption!r}: one of {', '.join(K.MODES)}")
    store = open_target(config.load(), name, create=True, init=encryption)
    info = _describe(store)
    if json_out:
        print_json(info)
        return
    console.print(f"backup target {store.name}: ready ({store.location}), encryption {info['encryption']}"
                  + (f", key {info['fingerprint']}" if info["fingerprint"] else ""))


@key_app.command("export")
def key_export(to: Path = typer.Option(..., "--to", help="File to write (made 0600; never overwritten)."),
               name: str | None = NAME, json_out: bool = JSON) -> None:
    """Write a copy of the target's (still wrapped) key: keep it apart from the repository."""
    settings = config.load()
    store = open_target(settings, name)
    if store.keys is None:
        raise InvalidInput(f"backup target {store.name} has no keys (a repository written before them)")
    record = keyring.record_of(store, settings, store.keys.repo_id, store.keys.mode)
    K.write_private(to, K.record_json(record))
    _say(json_out, {"target": store.name, "encryption": store.keys.mode, "fingerprint": K.fingerprint(store.keys),
                    "exported_to": str(to)},
         f"key of backup target {store.name} ({store.keys.mode}, {K.fingerprint(store.keys)}) → {to}")


@key_app.command("import")
def key_import(source: Path = typer.Argument(..., help="A file `key export` wrote."), name: str | None = NAME,
               json_out: bool = JSON) -> None:
    """Install an exported key on this host (keyfile, none) or back into the repository (repokey)."""
    settings = config.load()
    cfg = target_config(settings, name)
    blob = K.read_small(source, K.MAX_KEY_RECORD, "key file")
    if blob is None:
        raise InvalidInput(f"{source} does not exist")
    record = K.parse_record(blob, str(source))
    from kvmkit.backup.store import DirTarget  # a bare store: its keys are what is missing

    if cfg.kind == "s3":
        from kvmkit.backup.s3 import S3Target

        store = S3Target.from_config(cfg, settings.state_dir / "locks", mark_legacy=False)
    else:
        if cfg.path is None:
            raise InvalidInput(f"backup target {cfg.name}: kind dir needs path")
        store = DirTarget(cfg.name, cfg.path, mark_legacy=False)
    marker = store.marker or {}
    if (marker.get("repo_id"), marker.get("encryption")) != (record.repo_id, record.mode):
        raise InvalidInput(f"{source}: a key of repository {record.repo_id} ({record.mode}); target {cfg.name} is "
                           f"{marker.get('repo_id') or 'without keys'} ({marker.get('encryption') or 'legacy'})")
    if isinstance(record, K.KeyRecord):
        K.unwrap(record, keyring._secret(cfg, keyring.default_ask(), "importing a key"), cfg.name)  # it opens
    if record.mode == "repokey":
        if store._get(K.REPOKEY, K.MAX_KEY_RECORD) is not None:
            raise InvalidInput(f"backup target {cfg.name} has its repokey already; not overwritten")
        store._put(K.REPOKEY, K.record_json(record))
    else:
        K.write_private(K.host_key_path(settings.state_dir, record.repo_id, record.mode), K.record_json(record))
    opened = open_target(settings, name)
    assert opened.keys is not None
    _say(json_out, {"target": cfg.name, "encryption": record.mode, "fingerprint": K.fingerprint(opened.keys),
                    "installed": True},
         f"key of backup target {cfg.name} ({record.mode}, {K.fingerprint(opened.keys)}) installed")


@key_app.command("passwd")
def key_passwd(name: str | None = NAME,
               new_file: Path | None = typer.Option(None, "--new-passphrase-file",
                                                    help="Read the new passphrase from this file (else a prompt)."),
               json_out: bool = JSON) -> None:
    """Wrap the target's keys with a new passphrase (the data is not re-encrypted: the master keys stay)."""
    settings = config.load()
    store = open_target(settings, name)
    keys = store.keys
    if keys is None or not keys.encrypted:
        raise InvalidInput(f"backup target {store.name} has no passphrase (encryption "
                           f"{keys.mode if keys else 'legacy'})")
    if new_file is not None:
        blob = K.read_small(new_file, K.MAX_PASSPHRASE, "passphrase file")
        new = K._clean(blob or b"", store.name)
    elif sys.stdin.isatty():
        new = getpass.getpass("new passphrase: ").encode()
        if new != getpass.getpass("again: ").encode() or not new:
            raise InvalidInput("the two passphrases differ (or are empty); nothing changed")
    else:
        raise InvalidInput("no new passphrase: --new-passphrase-file FILE, or run on a terminal")
    assert keys.enc_key is not None and keys.id_key is not None
    record = K.wrap(keys.repo_id, keys.mode, keys.enc_key, keys.id_key, new)
    if keys.mode == "repokey":
        store._put(K.REPOKEY, K.record_json(record))
    else:
        K.write_private(K.host_key_path(settings.state_dir, keys.repo_id, keys.mode), K.record_json(record),
                        replace=True)
    _say(json_out, {"target": store.name, "encryption": keys.mode, "passphrase_changed": True},
         f"backup target {store.name}: passphrase changed; update passphrase_file / passphrase_env / the "
         "credential on every host, and export the key again")


def _say(json_out: bool, record: dict, text: str) -> None:
    if json_out:
        print_json(record)
    else:
        console.print(text)
