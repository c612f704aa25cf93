"""Structured log lines (logfmt), each naming the plugin it concerns when there is one."""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["LogfmtFormatter", "setup_logging"]

_EXTRA_KEYS = ("plugin", "distribution", "namespace", "topic")


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    """``time=... level=info logger=moorage.host plugin=content.local msg="..."``."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a logfmt line, with the traceback folded in."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"time={stamp}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
        ]
        parts += [f"{k}={_quote(getattr(record, k))}" for k in _EXTRA_KEYS if hasattr(record, k)]
        parts.append(f"msg={_quote(record.getMessage())}")
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str = "info") -> None:
    """Send structured lines to stderr at ``level`` (debug, info, warning, error)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The access logs (the API's, the CRI streaming server's) are one line per
    # request; keep them at debug.
    for name in ("moorage.http.access", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
