"""Paramiko's own log lines never reach the console: they are routed to an optional per-host sink.

Paramiko logs through the ``paramiko`` logger, and with no handler configured Python prints its warnings and
errors raw on stderr: "Socket exception: No route to host (113)" with no host name, or a whole traceback when
a connection is reset during the handshake. deployer reports those failures itself, one line per host; the
raw lines are kept for ``--verbose`` only, prefixed with the host they came from
(:func:`set_sink`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

Sink = Callable[[str, str], None]
"""Receives (host, message) for each of paramiko's log lines of level INFO and above."""

_PREFIX = "paramiko.deployer."
_sink: Sink | None = None
_lock = threading.Lock()


def log_channel(host: str) -> str:
    """The logger name a transport to ``host`` logs under (``paramiko.Transport.set_log_channel``)."""
    return _PREFIX + host


class _Router(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        sink = _sink
        if sink is None:
            return
        host = record.name[len(_PREFIX) :] if record.name.startswith(_PREFIX) else "ssh"
        try:
            message = record.getMessage()
        except Exception:  # a malformed record must not break a run
            return
        for line in message.splitlines() or [""]:
            sink(host, line)


def install() -> None:
    """Detach paramiko's loggers from the root logger (and Python's last-resort stderr handler)."""
    logger = logging.getLogger("paramiko")
    with _lock:
        if not any(isinstance(h, _Router) for h in logger.handlers):
            logger.addHandler(_Router(logging.INFO))
        logger.propagate = False


def set_sink(sink: Sink | None) -> None:
    """Send paramiko's log lines to ``sink`` (e.g. the console under ``--verbose``); None drops them."""
    global _sink
    install()
    _sink = sink
    logging.getLogger("paramiko").setLevel(logging.INFO if sink is not None else logging.WARNING)


install()
