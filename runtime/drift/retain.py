"""Recent traffic kept for training: the prompts of sampled requests,
sealed per subject, shredded after the retention period.  Off by default
([drift] retain_for_training; docs/drift.md, "Keeping traffic for training").

    retainer = TrafficRetainer(audit, retention_days=30)
    events.subscribe(retainer.on_request, RequestFinished)
    retainer.start()       # a writer thread; it also shreds expired days
    ...
    prompts = retained_prompts(audit)     # the "traffic" data set of a site
    retainer.close()

Only prompts are kept: adapting a language model to what users ask needs
their questions, not the model's answers (which it wrote itself).

A record is one line of state/traffic/<day>.jsonl (UTC day):

    {"ts": 1795940000.1, "sid": "<subject id>", "nonce": "<b64>", "ct": "<b64>"}

`ct` is the prompt under AES-256-GCM with a key derived (HKDF-SHA256) from
two erasable keys held, wrapped under the master key, in the audit log's
per-subject key table: the subject's own content key, and a key of the day.
`hearth audit erase --subject S` destroys S's key and `expire` destroys a
day's key (and unlinks its file): either makes the record unreadable for
good.  The subject's name never reaches the disk; its id is the audit log's
keyed hash of it.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from runtime.events import RequestFinished
from runtime.storage.fsutil import private_dir

log = logging.getLogger("hearth.drift")

TRAFFIC_DIR = "traffic"
DAY_S = 86_400
EXPIRE_EVERY_S = 3_600.0
# A day's key lives in the audit log's subject table under this name; no
# request's subject starts with a NUL.
_DAY_SUBJECT = "\x00hearth.traffic.day:"


def day_of(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _record_key(subject_key: bytes, day_key: bytes, day: str) -> bytes:
    return HKDF(hashes.SHA256(), 32, None, b"hearth-traffic/1 " + day.encode()
                ).derive(subject_key + day_key)


@dataclass
class TrafficStore:
    """The sealed traffic files, over an AuditLog's erasable keys (duck
    typed: subject_id, content_key, erase_subject and store.state_dir)."""

    audit: Any

    @property
    def dir(self) -> Path:
        return Path(self.audit.store.state_dir) / TRAFFIC_DIR

    def seal(self, subject: str, prompt: str, ts: float) -> bytes:
        """One record's line."""
        day = day_of(ts)
        sid = self.audit.subject_id(subject)
        key = _record_key(self.audit.content_key(sid, True),
                          self.audit.content_key(self.audit.subject_id(_DAY_SUBJECT + day), True),
                          day)
        nonce = secrets.token_bytes(12)
        ct = AESGCM(key).encrypt(nonce, prompt.encode("utf-8"), sid.encode())
        return json.dumps({"ts": round(ts, 3), "sid": sid,
                           "nonce": base64.b64encode(nonce).decode(),
                           "ct": base64.b64encode(ct).decode()}).encode() + b"\n"

    def append(self, lines: list[bytes], day: str) -> None:
        path = private_dir(self.dir) / f"{day}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "ab") as f:
            f.write(b"".join(lines))
            f.flush()
            os.fsync(f.fileno())

    def days(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.stem for p in self.dir.glob("*.jsonl"))

    def expire(self, now: float, retention_days: int) -> list[str]:
        """Shreds every day older than the retention period: its key is
        destroyed, then its file unlinked.  Returns the days shredded."""
        cutoff = day_of(now - retention_days * DAY_S)
        gone = []
        for day in self.days():
            if day >= cutoff:
                continue
            self.audit.erase_subject(_DAY_SUBJECT + day)
            (self.dir / f"{day}.jsonl").unlink(missing_ok=True)
            gone.append(day)
        if gone:
            log.info("retained traffic: %d day(s) past %d days shredded", len(gone),
                     retention_days)
        return gone

    def prompts(self) -> tuple[list[str], int]:
        """(readable prompts in order, records shredded by erasure)."""
        out: list[str] = []
        shredded = 0
        keys: dict[str, bytes | None] = {}

        def key_of(sid: str) -> bytes | None:
            if sid not in keys:
                keys[sid] = self.audit.content_key(sid, False)
            return keys[sid]

        for day in self.days():
            day_key = key_of(self.audit.subject_id(_DAY_SUBJECT + day))
            for line in (self.dir / f"{day}.jsonl").read_bytes().splitlines():
                try:
                    rec = json.loads(line)
                    sid = str(rec["sid"])
                    subject_key = key_of(sid)
                    if subject_key is None or day_key is None:
                        shredded += 1
                        continue
                    out.append(AESGCM(_record_key(subject_key, day_key, day)).decrypt(
                        base64.b64decode(rec["nonce"]), base64.b64decode(rec["ct"]),
                        sid.encode()).decode("utf-8"))
                except (ValueError, KeyError, TypeError, InvalidTag):
                    log.warning("retained traffic: an unreadable record in %s.jsonl", day)
        return out, shredded


def retained_prompts(audit: Any) -> list[str]:
    """Every retained prompt that is still readable (a site's data set)."""
    return TrafficStore(audit).prompts()[0]


class TrafficRetainer:
    """Keeps the prompts of requests the drift watch sampled (RequestFinished
    with signals and content); a writer thread seals them, and shreds expired
    days on start and every EXPIRE_EVERY_S."""

    def __init__(self, audit: Any, retention_days: int, queue_size: int = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.traffic = TrafficStore(audit)
        self.retention_days = retention_days
        self.clock = clock
        self.dropped = 0
        self.kept = 0
        self._queue: queue.Queue[tuple[str, str, float] | None] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None

    def on_request(self, event: RequestFinished) -> None:
        """On the event loop: queue only."""
        if event.drift is None or event.content is None or event.status != "ok":
            return
        try:
            self._queue.put_nowait((event.subject or event.client, event.content[0],
                                    self.clock()))
        except queue.Full:
            self.dropped += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hearth-traffic", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def expire(self) -> list[str]:
        return self.traffic.expire(self.clock(), self.retention_days)

    def _run(self) -> None:
        next_expiry = 0.0
        while True:
            if time.monotonic() >= next_expiry:
                try:
                    self.expire()
                except Exception:
                    log.exception("retained traffic: expiry failed")
                next_expiry = time.monotonic() + EXPIRE_EVERY_S
            try:
                item = self._queue.get(timeout=EXPIRE_EVERY_S)
            except queue.Empty:
                continue
            batch = [item]
            while not self._queue.empty() and len(batch) < 256:
                batch.append(self._queue.get_nowait())
            stop = None in batch
            try:
                self._write([b for b in batch if b is not None])
            except Exception:
                log.exception("retained traffic: writing failed")
            if stop:
                return

    def _write(self, batch: list[tuple[str, str, float]]) -> None:
        by_day: dict[str, list[bytes]] = {}
        for subject, prompt, ts in batch:
            by_day.setdefault(day_of(ts), []).append(self.traffic.seal(subject, prompt, ts))
        for day, lines in by_day.items():
            self.traffic.append(lines, day)
            self.kept += len(lines)
