"""Local commands on the state directory: keys, models import, store, audit.

Every one takes --state-dir (or $HEARTH_STATE_DIR) and one master key source:
--key-file, --passphrase-file, --credential, or an interactive prompt.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from runtime.cli.state import add_state_options, opened_store, source_of
from runtime.errors import ConfigError, InvalidArgument
from runtime.exit_codes import ExitCode
from runtime.storage.audit import AuditLog
from runtime.storage.audit_verify import verify_audit
from runtime.storage.catalog import Catalog
from runtime.storage.keys import Keyring, create_key_file, key_source
from runtime.storage.paths import state_dir
from runtime.storage.store import Kind, SealedStore


class ProgressBar:
    """A one-line progress bar on stderr (only on a terminal)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.tty or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30)
        rate = done / max(now - self.start, 1e-9) / 1e6
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {frac * 100:5.1f}% {rate:7.1f} MB/s")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


# ---- keys ---------------------------------------------------------------------------------

def cmd_keys_init(args: argparse.Namespace) -> int:
    directory = state_dir(args.state_dir)
    if args.key_file and not Path(args.key_file).exists():
        create_key_file(args.key_file)
        print(f"created key file {args.key_file} (mode 0600); keep a copy somewhere safe",
              file=sys.stderr)
    store = SealedStore.init(directory, source_of(args, confirm=True))
    print(f"initialised {directory} with master key {store.master.id}")
    store.close()
    return ExitCode.OK


def cmd_keys_status(args: argparse.Namespace) -> int:
    directory = state_dir(args.state_dir)
    data = Keyring(directory).load()
    catalog = Catalog(directory / "catalog.sqlite")
    usage = catalog.kek_usage()
    catalog.close()
    print(f"state directory: {directory}")
    for entry in data["keks"]:
        active = " (active)" if entry["id"] == data["active"] else ""
        created = datetime.fromtimestamp(entry["created"], UTC).strftime("%Y-%m-%d %H:%M UTC")
        print(f"master key {entry['id']}{active}: {entry['source']}, {entry['kdf']['name']}, "
              f"created {created}, wraps {usage.get(entry['id'], 0)} keys")
    if len(data["keks"]) > 1:
        print("two master keys are listed: a rotation did not finish; open the store with the "
              "key that wraps the objects, or run `hearth keys rotate` again")
    if data.get("failed_attempts"):
        print(f"failed unlock attempts since the last success: {data['failed_attempts']}")
    return ExitCode.OK


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    if args.new_key_file and not Path(args.new_key_file).exists():
        create_key_file(args.new_key_file)       # "created if missing", before reading it
    new = key_source(args.new_key_file, args.new_passphrase_file, args.new_credential,
                     confirm=True)
    with opened_store(args) as store:
        old = store.master.id
        count = len(store.catalog.rows())
        master = store.rotate(new)
        if (store.state_dir / "audit" / "log.jsonl").exists():   # for the change log
            AuditLog(store).record_admin("keys.rotated", {"from_key": old, "to_key": master.id,
                                                          "objects": count})
    print(f"re-wrapped {count} objects from {old} to {master.id}")
    return ExitCode.OK


# ---- models import, store ------------------------------------------------------------------

def gguf_check(fd: int, path: Path, kind: Kind) -> None:
    """`hearth models import` seals a model or an adapter only if its GGUF
    header checks out and says it is that kind."""
    if kind not in (Kind.MODEL, Kind.ADAPTER):
        return
    from runtime.models.gguf_file import inspect_gguf_fd

    info = inspect_gguf_fd(fd, path.name, str(path))
    if info.kind != kind:
        raise InvalidArgument(f"{path.name} is a GGUF {info.kind}, not a {kind} "
                              f"(use --kind {info.kind})")


def _seal_file(args: argparse.Namespace, kind: Kind, done: str) -> int:
    with opened_store(args) as store:
        path = Path(args.path)
        obj = store.import_file(path, args.name, kind, args.remove_source,
                                progress=ProgressBar(f"sealing {path.name}"), check=gguf_check)
    print(f"{done} {obj.name} version {obj.version}: {obj.size} bytes, "
          f"sha256 {obj.sha256[:16]}…")
    if args.remove_source:
        print(f"removed {path} (unlinked; not a secure erase)", file=sys.stderr)
    return ExitCode.OK


def cmd_models_import(args: argparse.Namespace) -> int:
    return _seal_file(args, Kind.parse(args.kind), f"imported {args.kind}")


def cmd_data_add(args: argparse.Namespace) -> int:
    """Local training text, sealed like everything else (kind "dataset")."""
    return _seal_file(args, Kind.DATASET, "added data set")


def cmd_store_list(args: argparse.Namespace) -> int:
    with opened_store(args) as store:
        for o in store.list():
            when = datetime.fromtimestamp(o.created_at, UTC).strftime("%Y-%m-%d %H:%M")
            print(f"{o.kind:8} {o.name:24} v{o.version:<3} {o.size / 2**20:9.1f} MiB  {when}  "
                  f"sha256 {o.sha256[:12]}  from {o.source}")
    return ExitCode.OK


def cmd_store_verify(args: argparse.Namespace) -> int:
    with opened_store(args) as store:
        obj = store.verify(Kind.parse(args.kind), args.name, args.version)
    print(f"{obj.kind} {obj.name} v{obj.version}: every chunk and the SHA-256 verify")
    return ExitCode.OK


# ---- audit -----------------------------------------------------------------------------------

def cmd_audit_verify(args: argparse.Namespace) -> int:
    """With the master key, the signing key comes from the sealed store and
    the anchor from the authenticated catalog; without it, --fingerprint
    names the signing key (the chain is over ciphertext)."""
    directory = state_dir(args.state_dir)
    if args.key_file or args.passphrase_file or args.credential:
        with opened_store(args) as store:
            verdict = verify_audit(directory, args.fingerprint, store)
    else:
        verdict = verify_audit(directory, args.fingerprint)
    if verdict.broken is not None:
        print(f"audit log BROKEN: {verdict.broken}")
        return ExitCode.INTEGRITY
    print(f"audit log intact: {verdict.records} records; chain, checkpoint signatures and "
          f"anchor verified under signing key {verdict.fingerprint}")
    return ExitCode.OK


def parse_since(text: str | None) -> float:
    """A `--since` value (Unix seconds or an ISO date/time) as Unix seconds;
    one parser for `audit export`, `energy report` and `report`."""
    if not text:
        return 0.0
    try:
        return float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ConfigError(f"--since: {text!r} is not an ISO date or a Unix time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()


def cmd_audit_export(args: argparse.Namespace) -> int:
    with opened_store(args) as store:
        audit = AuditLog(store)
        broken = audit.verify()
        if broken is not None:
            print(f"warning: the audit log is broken at {broken}; exporting what decrypts",
                  file=sys.stderr)
        count = 0
        for entry in audit.entries(since=parse_since(args.since)):
            sys.stdout.write(json.dumps(entry, sort_keys=True) + "\n")
            count += 1
    print(f"exported {count} records", file=sys.stderr)
    return ExitCode.OK


def cmd_audit_erase(args: argparse.Namespace) -> int:
    with opened_store(args) as store:
        erased = AuditLog(store).erase_subject(args.subject)
    if erased:
        print(f"destroyed the content key of {args.subject!r}: their logged prompts and "
              "responses can no longer be decrypted; the chain is unchanged")
    else:
        print(f"no logged content for {args.subject!r}")
    return ExitCode.OK


def cmd_audit_prune(args: argparse.Namespace) -> int:
    from runtime.config import AuditConfig, load_config

    if args.days is not None and args.days < 1:
        raise ConfigError(f"--days: must be at least 1, got {args.days}")
    days = args.days or (load_config(args.config).audit if args.config
                         else AuditConfig()).retention_days
    with opened_store(args) as store:
        pruned = AuditLog(store).prune(days)
    if pruned.epochs:
        print(f"crypto-shredded {len(pruned.epochs)} day(s) of audit records older than "
              f"{days} days ({pruned.epochs[0][6:]}..{pruned.epochs[-1][6:]}); the chain is "
              "unchanged")
    else:
        print(f"nothing older than {days} days to shred")
    return ExitCode.OK


def cmd_audit_repair(args: argparse.Namespace) -> int:
    with opened_store(args) as store:
        aside = AuditLog(store).repair()
    print(f"set the broken log aside as {aside} and started a new, signed chain that "
          "records where the old one broke")
    return ExitCode.OK


Handler = Callable[[argparse.Namespace], int]


def command(group: argparse._SubParsersAction, name: str, help_text: str, func: Handler
             ) -> argparse.ArgumentParser:
    """A subcommand working on the state directory (so it takes its options)."""
    p = group.add_parser(name, help=help_text)
    add_state_options(p)
    p.set_defaults(func=func)
    return p


def add_parsers(sub: argparse._SubParsersAction, models: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="master key: init, status, rotate")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    command(ksub, "init", "create the state directory and its keyring", cmd_keys_init)
    command(ksub, "status", "master keys and what they wrap (no key needed)", cmd_keys_status)
    p = command(ksub, "rotate", "re-wrap every data key under a new master key",
                 cmd_keys_rotate)
    p.add_argument("--new-key-file", help="new key file (created if missing)")
    p.add_argument("--new-passphrase-file")
    p.add_argument("--new-credential")

    p = command(models, "import", "seal a GGUF model or adapter into the local store",
                 cmd_models_import)
    p.add_argument("path")
    p.add_argument("--name", required=True, help="identifier to serve it under")
    p.add_argument("--kind", choices=[Kind.MODEL.value, Kind.ADAPTER.value],
                   default=Kind.MODEL.value)
    p.add_argument("--remove-source", action="store_true",
                   help="unlink the plaintext file after a successful import")

    data = sub.add_parser("data", help="local training data, sealed in the store")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = command(dsub, "add", "seal a text file as a data set for local training",
                 cmd_data_add)
    p.add_argument("name", help="identifier of the data set")
    p.add_argument("path")
    p.add_argument("--remove-source", action="store_true",
                   help="unlink the plaintext file after a successful import")

    store = sub.add_parser("store", help="the local sealed store: list, verify")
    ssub = store.add_subparsers(dest="store_command", required=True)
    command(ssub, "list", "every stored object", cmd_store_list)
    p = command(ssub, "verify", "decrypt an object and check every chunk and its hash",
                 cmd_store_verify)
    p.add_argument("name")
    p.add_argument("--kind", default=Kind.MODEL.value, choices=[k.value for k in Kind])
    p.add_argument("--version", type=int)

    audit = sub.add_parser("audit", help="the audit log: verify, export, erase, repair")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    p = command(asub, "verify", "check the hash chain, signatures and anchor (with the master "
                                "key, or --fingerprint)", cmd_audit_verify)
    p.add_argument("--fingerprint", help="SHA-256 of the audit signing key (what a verify with "
                                         "the master key prints); needed without the key")
    p = command(asub, "export", "decrypted records as JSON lines, for auditors",
                 cmd_audit_export)
    p.add_argument("--since", help="ISO date/time (UTC if no zone) or Unix time")
    p = command(asub, "erase", "crypto-shred one subject's logged content (GDPR)",
                 cmd_audit_erase)
    p.add_argument("--subject", required=True)
    command(asub, "repair", "set a broken log aside and start a new chain", cmd_audit_repair)
    p = command(asub, "prune", "crypto-shred records older than the retention ([audit] "
                               "retention_days, default 183)", cmd_audit_prune)
    p.add_argument("--config", help="hearth.toml whose [audit] retention_days applies")
    p.add_argument("--days", type=int, help="retention in days (overrides the config)")
