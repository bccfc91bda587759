"""How log lines look: ``--log-format text`` (the default) or ``json``.

The server logs each event once, as a text line with its facts attached as structured
fields (``extra=event("close", peer=..., bytes=...)``). The text formatter prints the line;
:class:`JsonFormatter` prints one JSON object per event instead, with the same facts as
fields, for log shippers (Loki, Elasticsearch, ``jq``)::

    {"time": "2026-11-29T18:02:03.123Z", "level": "info", "event": "close",
     "message": "close 127.0.0.1:40000: echoed 5 bytes in 0.002 s", "peer": "127.0.0.1:40000",
     "bytes": 5, "duration": 0.002, "reason": "eof"}

Events: ``open``, ``close`` (``bytes``, ``duration`` in seconds, ``reason``), ``rejected``,
``proxy_failed``, ``fault``, ``stop``; any other line is ``"event": "log"``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

LOG_FORMATS = ("text", "json")

_EVENT = "sockecho_event"
_FIELDS = "sockecho_fields"


def event(name: str, **fields: Any) -> dict[str, Any]:
    """The ``extra=`` of a log call that records event ``name`` with ``fields``."""
    return {_EVENT: name, _FIELDS: fields}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ms), level, event, message and its fields."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, Any] = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": getattr(record, _EVENT, "log"),
            "message": record.getMessage(),
        }
        for key, value in getattr(record, _FIELDS, {}).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for ``--log-format``."""
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
