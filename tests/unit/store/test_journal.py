"""proxy/store/journal.py: unwritten usage survives a restart, once, into its own store only."""
from __future__ import annotations

import json
import logging
import os

import pytest

from proxy.store.journal import PREFIX, Journal
from proxy.store.usage import Stamp

BATCH = {(490000, "dep\x1fm\x1fkey\x1f\x1finput"): 120, (490000, "dep\x1fm\x1fkey\x1f\x1frequests"): 3,
         (490001, "dep\x1fm\x1fkey\x1f\x1foutput"): 7}
SENT = (Stamp("w1", 41), {(490000, "dep\x1fm\x1fkey\x1f\x1finput"): 9})
W1, W2 = Stamp("w1", 42), Stamp("w2", 1)


def merged(batches) -> dict:
    total: dict = {}
    for _, batch in batches:
        for item, amount in batch.items():
            total[item] = total.get(item, 0) + amount
    return total


def test_a_spill_is_claimed_whole_once_and_then_gone(tmp_path) -> None:
    journal = Journal(tmp_path / "state", "redis://10.0.0.5:6379/0")
    journal.spill([SENT, (W1, BATCH)])
    journal.spill([(W2, {(490000, "dep\x1fm\x1fkey\x1f\x1finput"): 5})])
    again = Journal(tmp_path / "state", "redis://10.0.0.5:6379/0")
    claimed = again.claim()
    # Oldest file first, each batch with its stamp.
    assert claimed == [SENT, (W1, BATCH), (W2, {(490000, "dep\x1fm\x1fkey\x1f\x1finput"): 5})]
    assert again.claim() == [] and list((tmp_path / "state").iterdir()) == []


def test_usage_is_only_replayed_into_the_store_it_was_meant_for(tmp_path) -> None:
    Journal(tmp_path, "redis://a:6379/0").spill([(W1, BATCH)])
    assert Journal(tmp_path, "redis://b:6379/0").claim() == []
    assert Journal(tmp_path, "/var/lib/laneway/usage.sqlite3").claim() == []
    assert Journal(tmp_path, "redis://a:6379/0").claim() == [(W1, BATCH)]


def test_the_file_names_the_store_by_digest_never_by_address(tmp_path) -> None:
    path = Journal(tmp_path, "redis://:***@redis.internal:6379/0").spill([(W1, BATCH)])
    text = path.read_text()
    assert "redis.internal" not in text and "***" not in text
    assert json.loads(text)["batches"][0]["rows"]


def test_two_workers_claiming_at_once_replay_each_file_exactly_once(tmp_path, monkeypatch) -> None:
    store = "redis://a:6379/0"
    for n in range(20):
        Journal(tmp_path, store).spill([(Stamp("w", n), {(1, f"f{n}"): n + 1})])
    first, second = Journal(tmp_path, store), Journal(tmp_path, store)
    real_rename = os.rename
    theirs: dict = {}
    racing: list[bool] = []

    def racing_rename(src, dst):
        # The other worker claims every file between our read of the first one and our rename of it.
        if "claimed" in str(dst) and not racing:
            racing.append(True)
            theirs.update(merged(second.claim()))
        return real_rename(src, dst)
    monkeypatch.setattr(os, "rename", racing_rename)
    mine = merged(first.claim())
    assert racing and len(theirs) == 20
    assert not set(mine) & set(theirs)
    assert sum(mine.values()) + sum(theirs.values()) == sum(range(1, 21))


def test_a_torn_or_foreign_file_is_left_for_an_operator_and_logged(tmp_path, caplog) -> None:
    (tmp_path / f"{PREFIX}1-1.json").write_text('{"version": 1, "store": "x", "batches": [{"rows": [[1, "f"')
    (tmp_path / f"{PREFIX}1-2.json").write_text(json.dumps(
        {"version": 1, "store": "x", "batches": [{"writer": "w", "seq": 1, "rows": [["h", "f", 1]]}]}))
    (tmp_path / ".unwritten-1-3.json.partial").write_text("{")  # a spill cut off before its rename
    with caplog.at_level(logging.ERROR, "laneway"):
        assert Journal(tmp_path, "redis://a:6379/0").claim() == []
    assert sum("cannot be read" in r.getMessage() for r in caplog.records) == 2
    assert len(list(tmp_path.iterdir())) == 3


def test_a_directory_that_cannot_be_written_raises_instead_of_pretending(tmp_path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(OSError):
        Journal(blocked, "memory").spill([(W1, BATCH)])
