"""opd's own messages go through the ``opd_cli`` Python logger (the libraries' loggers are left as they are).

By default INFO and above print to the console as plain lines: progress notes to stdout, warnings to stderr, each to
the stream current at that moment (so test runners that swap ``sys.stdout`` see them). Silence or redirect them
like any logger, e.g. ``logging.getLogger("opd_cli").setLevel(logging.WARNING)``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any


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


def progress_bar(console: Any = None, *extra: Any) -> Any:
    """The rich progress bar every long command shows: description, bar, done/total, ``extra`` columns, elapsed.

    ``console`` picks the stream (the analyses render to stderr, so their CSV/JSON output on stdout stays clean).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(), *extra,
               TimeElapsedColumn())
    return Progress(*columns, console=console, transient=False)
