"""Structured logs of the node: one JSON object per line, with an ``event`` name.

A node runs unattended; its logs are read by log shippers and by people searching for one
study or one peer. Every record therefore carries a stable event name (``association.rejected``,
``instance.stored``, ...) and its facts as fields, instead of prose to be parsed.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dicom_node.node.config import LogConfig

_FIELDS = "myonode_fields"
_EVENT = "myonode_event"


class JsonLinesFormatter(logging.Formatter):
    """``{"time", "level", "logger", "event", ...fields, "message"?, "exception"?}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, _EVENT, None) or "log",
        }
        fields = getattr(record, _FIELDS, None)
        if fields:
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO,
              **fields: Any) -> None:
    """Log ``event`` with ``fields`` (values that are not JSON types are written as text)."""
    if logger.isEnabledFor(level):
        message = " ".join([event, *(f"{k}={v}" for k, v in fields.items())])
        logger.log(level, message, extra={_EVENT: event, _FIELDS: fields})


class _NodeHandler(logging.StreamHandler):
    """Marks the handlers installed here, so a second setup replaces them."""


class _NodeFileHandler(logging.FileHandler):
    """File variant of ``_NodeHandler``."""


def setup_logging(config: LogConfig, stream: Any = None) -> None:
    """Send every log record to stderr (or ``stream``) and to ``config.file`` as JSON lines.

    pynetdicom logs every PDU at INFO; it is kept at WARNING unless the level is DEBUG.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, (_NodeHandler, _NodeFileHandler)):
            root.removeHandler(handler)
            handler.close()
    formatter = JsonLinesFormatter()
    handlers: list[logging.Handler] = [_NodeHandler(stream or sys.stderr)]
    if config.file is not None:
        Path(config.file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(_NodeFileHandler(config.file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(config.level)
    logging.getLogger("pynetdicom").setLevel(
        logging.DEBUG if config.level == "DEBUG" else logging.WARNING
    )
