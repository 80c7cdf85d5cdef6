"""Usage the ledger could not write before its process stopped, kept on local disk for the next start.

A worker that stops while its ledger's store is down (Redis unreachable, a full disk) spills
the batches it still holds to one file in the state directory, each with its stamp; the next
ledger that starts with the same store claims the file and sends them with its first flush
under those stamps, so a batch whose first write was applied after all is counted once. So an outage that outlasts a restart delays
usage instead of losing it.

- A spill is written to a temporary name, fsynced, then renamed: a file is whole or absent.
- A file names the store it was meant for (a digest of the store's redacted address, never a
  password), so usage is only ever replayed into the store it belongs to.
- Claiming renames the file before reading it: of several workers starting at once, exactly
  one replays it. The claimed file is deleted once its contents are in the ledger's buffer;
  from then on they are buffered usage like any other (written by the next flush, spilled
  again by the next shutdown that cannot write).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from proxy.store.usage import Batch, Stamp

log = logging.getLogger("laneway")

PREFIX = "unwritten-"
VERSION = 1

Batches = list[tuple[Stamp, Batch]]  # oldest first


class Journal:
    """Spill and claim files of unwritten usage for one store in one directory."""

    def __init__(self, directory: Path, store: str) -> None:
        self.directory = directory
        self.store_id = hashlib.sha256(store.encode()).hexdigest()[:32]

    def spill(self, batches: Batches) -> Path:
        """Write ``batches`` to a new file; raises OSError when the directory cannot take it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{PREFIX}{time.time_ns():020d}-{os.getpid()}.json"  # oldest first when sorted
        final, partial = self.directory / name, self.directory / ("." + name + ".partial")
        entries = [{"writer": stamp.writer, "seq": stamp.seq,
                    "rows": [[hour, field, amount] for (hour, field), amount in batch.items()]}
                   for stamp, batch in batches]
        data = json.dumps({"version": VERSION, "store": self.store_id, "batches": entries}).encode()
        with open(partial, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.rename(partial, final)
        _sync_directory(self.directory)
        return final

    def claim(self) -> Batches:
        """Take every file meant for this store: its batches, oldest file first; the files are gone after."""
        claimed: Batches = []
        if not self.directory.is_dir():
            return claimed
        for path in sorted(self.directory.glob(PREFIX + "*.json")):  # names start with the spill's time
            data = _read(path)  # a spill is never written again once renamed into place: read once
            if data.get("store") != self.store_id:
                continue  # another store's usage (or unreadable, logged): left for its own ledger
            mine = path.with_name(f".claimed-{os.getpid()}-{path.name}")
            try:
                os.rename(path, mine)
            except FileNotFoundError:
                continue  # another worker claimed it first
            for entry in data["batches"]:
                claimed.append((Stamp(entry["writer"], entry["seq"]),
                                {(hour, field): amount for hour, field, amount in entry["rows"]}))
            mine.unlink()
        return claimed


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes())
        for entry in data["batches"]:
            if not (isinstance(entry["writer"], str) and isinstance(entry["seq"], int)) or not all(
                    isinstance(h, int) and isinstance(f, str) and isinstance(a, int) for h, f, a in entry["rows"]):
                raise ValueError("unexpected shape")
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}")
        return data
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("usage journal: %s cannot be read (%s); it is left in place for an operator", path, exc)
        return {}


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX: fsync the directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
