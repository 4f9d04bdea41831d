"""opd's own messages go through the ``opd_cli`` Python logger (the libraries' loggers are left as they are).

By default INFO and above print to the console as plain lines: progress notes to stdout, warnings to stderr, each to
the stream current at that moment (so test runners that swap ``sys.stdout`` see them). Silence or redirect them
like any logger, e.g. ``logging.getLogger("opd_cli").setLevel(logging.WARNING)``.
"""

from __future__ import annotations

import logging
import sys


class _ConsoleHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # a closed stream must not break a run
            self.handleError(record)


logger = logging.getLogger("opd_cli")
if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
    _handler = _ConsoleHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
