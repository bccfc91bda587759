"""--log-format: text lines by default, one JSON object per event with json."""

from __future__ import annotations

import json
import logging
import sys

from sockecho import logs


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("sockecho", logging.INFO, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_format_gives_the_event_its_message_and_its_fields() -> None:
    rec = record(
        "close %s: echoed %d bytes", "127.0.0.1:4000", 5,
        **logs.event("close", peer="127.0.0.1:4000", bytes=5, duration=0.25, reason="eof"),
    )  # fmt: skip
    entry = json.loads(logs.formatter("json").format(rec))
    assert entry["event"] == "close"
    assert entry["level"] == "info"
    assert entry["message"] == "close 127.0.0.1:4000: echoed 5 bytes"
    assert (entry["peer"], entry["bytes"], entry["duration"], entry["reason"]) == (
        "127.0.0.1:4000", 5, 0.25, "eof",
    )  # fmt: skip
    assert entry["time"].endswith("Z")


def test_json_format_names_a_plain_line_log_and_keeps_one_line_per_record() -> None:
    rec = record("two\nlines")
    text = logs.formatter("json").format(rec)
    assert "\n" not in text
    assert json.loads(text)["event"] == "log"


def test_json_format_carries_a_traceback_in_a_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    entry = json.loads(logs.formatter("json").format(rec))
    assert "ValueError: boom" in entry["traceback"]


def test_fields_never_replace_the_standard_keys() -> None:
    rec = record("hello", **logs.event("open", message="spoofed", peer="p"))
    entry = json.loads(logs.formatter("json").format(rec))
    assert entry["message"] == "hello"
    assert entry["peer"] == "p"


def test_text_format_is_the_time_and_the_line() -> None:
    rec = record("open %s", "127.0.0.1:4000", **logs.event("open", peer="127.0.0.1:4000"))
    line = logs.formatter("text").format(rec)
    assert line.endswith(" open 127.0.0.1:4000")
