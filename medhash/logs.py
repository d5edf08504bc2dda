"""Logging for every medhash command and service, set up in one place (`setup_logging`).

Design: medhash reports through the standard `logging` module only, so that a log file, journald, a
container runtime or a notebook each get what they expect. Two formats: `text` (one readable line per
record, for people and log files) and `json` (one JSON object per line, for log collectors). Records
go to whatever `sys.stderr` is when they are written (not when logging was set up), so stdout stays
free for a command's result (`--json`) and test runners that swap the streams see every line.

Progress bars (tqdm) are for terminals only: `progress_bars(wanted)` is true only when stderr is a
TTY. Elsewhere the jobs log one line per unit of work instead (a shard, an epoch), which a file
holds line by line with no carriage-return frames.

Verbosity: medhash's own loggers log at `level` (INFO by default: the first line of a job, one line
per shard or epoch); other libraries log warnings only. Dask's and uvicorn's own start/stop
chatter appears only with -vv (`chatty=True`), where everything logs at DEBUG.
"""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "setup_logging", "progress_bars", "format_eta", "format_record"]

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# Libraries whose INFO records are start/stop chatter rather than news about the job.
CHATTY_LOGGERS = ("distributed", "dask", "bokeh", "tornado", "uvicorn", "uvicorn.error", "asyncio", "httpx",
                  "matplotlib", "PIL", "numexpr")


class _CurrentStderr(logging.StreamHandler):
    """A StreamHandler on whatever sys.stderr is at the time of each record."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ assigns it; the property ignores that
        pass


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO 8601, UTC), level, logger, message, and any `extra` fields."""

    _standard = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in self._standard and not k.startswith("_")})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _OneLine(logging.Formatter):
    """Text records on one line: newlines in a message (a multi-line error) become ' | '."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace("\r", "").replace("\n", " | ") if not record.exc_info else text


_HANDLER_NAME = "medhash"


def setup_logging(level: str = "info", fmt: str = "text", chatty: bool = False) -> None:
    """Route every record to stderr in `fmt`; medhash's loggers at `level`, other libraries at WARNING
    (at DEBUG with `chatty`). Calling it again replaces the previous set-up (each CLI invocation does)."""
    if level not in LOG_LEVELS or fmt not in LOG_FORMATS:
        raise ValueError(f"log level {level!r} / format {fmt!r}; known: {LOG_LEVELS} / {LOG_FORMATS}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = _CurrentStderr()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else _OneLine(TEXT_FORMAT, DATE_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if chatty else logging.WARNING)
    logging.getLogger("medhash").setLevel(getattr(logging, level.upper()))
    for name in CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.NOTSET if chatty else logging.WARNING)
        if name.startswith("uvicorn"):
            logger.handlers.clear()  # uvicorn adds its own handler; ours formats its records instead
            logger.propagate = True


def progress_bars(wanted: bool | None = True) -> bool:
    """Whether to draw progress bars: asked for (None: if possible) and stderr is a terminal."""
    return wanted is not False and sys.stderr.isatty()


def format_eta(seconds: float | None) -> str:
    """12 s, 3 min 05 s, 2 h 07 min; '?' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_record(record: dict, skip: tuple[str, ...] = ("epoch",)) -> str:
    """{"loss": 0.41234, "images_per_s": 812.3} -> 'loss 0.4123, images/s 812.3': one short log line."""
    parts = []
    for key, value in record.items():
        if key in skip:
            continue
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{key.replace('_per_s', '/s')} {text}")
    return ", ".join(parts)
