"""The access log observer: one INFO line per finished request or WebSocket turn, from its Outcome."""
from __future__ import annotations

import logging
import os
import threading

from proxy.api.access_log import access_log
from proxy.call import Outcome


def outcome(**overrides) -> Outcome:
    values = dict(request_id="req_1", endpoint="chat", route="codex", key_name="ci-bot", team="platform",
                  deployment="spark-wafer", hardware="wafer", reason="primary", status=200, stream=True,
                  input_tokens=12, output_tokens=30, started=10.0, upstream_started=10.0004, first_token_at=10.0104,
                  finished=10.0504)
    values.update(overrides)
    return Outcome(**values)


def test_one_line_with_the_outcome_fields(caplog):
    with caplog.at_level(logging.INFO, logger="laneway.access"):
        access_log(outcome())
    [line] = caplog.records
    assert (line.name, line.levelname, line.getMessage()) == ("laneway.access", "INFO", "request")
    assert line.fields == {
        "request_id": "req_1", "endpoint": "chat", "transport": "http", "stream": True, "route": "codex",
        "deployment": "spark-wafer", "lane": "wafer", "status": 200, "reason": "primary", "error": None,
        "added_ms": 0.4, "ttft_ms": 10.4, "total_ms": 50.4, "tokens_in": 12, "tokens_out": 30,
        "key": "ci-bot", "team": "platform",
    }


def test_a_refused_request_has_no_upstream_timings(caplog):
    with caplog.at_level(logging.INFO, logger="laneway.access"):
        access_log(outcome(deployment=None, hardware=None, reason="", status=429, error_code="rate_limit_exceeded",
                           upstream_started=0.0, first_token_at=None, output_tokens=0))
    fields = caplog.records[0].fields
    assert (fields["status"], fields["error"], fields["added_ms"], fields["ttft_ms"], fields["reason"]) == (
        429, "rate_limit_exceeded", None, None, None)


def test_a_websocket_turn_is_a_turn_line(caplog):
    with caplog.at_level(logging.INFO, logger="laneway.access"):
        access_log(outcome(transport="websocket"))
    assert caplog.records[0].getMessage() == "turn" and caplog.records[0].fields["transport"] == "websocket"


def test_nothing_below_info(caplog):
    with caplog.at_level(logging.WARNING, logger="laneway.access"):
        access_log(outcome())
    assert caplog.records == []


def test_the_record_is_what_make_record_builds_but_for_its_own_time_and_thread(caplog):
    """Records are copied from a per-process template: every attribute a formatter may read must match
    what logger.makeRecord builds, and the clock and thread must be each record's own."""
    logger = logging.getLogger("laneway.access")
    with caplog.at_level(logging.INFO, logger="laneway.access"):
        access_log(outcome())
        reference = logger.makeRecord(logger.name, logging.INFO, access_log.__code__.co_filename, 0, "request", None, None)
        thread = threading.Thread(target=lambda: access_log(outcome(transport="websocket")), name="other")
        thread.start()
        thread.join()
    first, other = caplog.records
    constant = set(reference.__dict__) - {"created", "msecs", "relativeCreated", "fields", "message", "asctime"}
    assert {k: first.__dict__[k] for k in constant} == {k: reference.__dict__[k] for k in constant}
    assert abs(first.created - reference.created) < 1 and first.msecs == int((first.created % 1) * 1000)
    assert (other.threadName, other.thread, other.getMessage()) == ("other", thread.ident, "turn")
    assert other.created >= first.created and other.relativeCreated >= first.relativeCreated
    assert logging.Formatter("%(filename)s %(module)s %(process)d %(levelname)s").format(first) == (
        f"access_log.py access_log {os.getpid()} INFO")


def test_a_forked_child_writes_its_own_pid():
    """The record template is per process: a child forked after the parent logged names itself."""
    logger = logging.getLogger("laneway.access")
    seen: list[int] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.process)
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        access_log(outcome())
        read, write = os.pipe()
        child = os.fork()
        if child == 0:
            access_log(outcome())
            os.write(write, str(seen[-1]).encode())
            os._exit(0)
        os.close(write)
        reported = int(os.read(read, 64))
        os.waitpid(child, 0)
        os.close(read)
    finally:
        logger.removeHandler(handler)
        logger.level = level
    assert seen == [os.getpid()] and reported == child
