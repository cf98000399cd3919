"""The service's logs: the JSON access log, and no personal data in any log line.

BentoML logs every exception a route raises with its traceback, and pydantic's
``ValidationError`` text quotes each invalid input (``input_value={'email': …}``).
:func:`configure_service_logging` puts :class:`RedactValidationInput` on the loggers that
do so and on every handler, so such a record keeps its message and the paths of the
invalid fields but loses the values.
"""

from __future__ import annotations

import logging
import re
import sys

from pydantic import ValidationError

ACCESS_LOGGER = "bespoke.serving.access"
#: Loggers that log a route's exception (with its traceback) in the worker.
_EXCEPTION_LOGGERS = (
    "bentoml._internal.server.http_app",
    "_bentoml_impl.server.app",
    "uvicorn.error",
)
#: A field-path part that is a model's field name (snake case), shown as it is; any other
#: part (a key a caller chose) is shown as "?".
_FIELD_NAME = re.compile(r"^[a-z_]{1,40}$")


class RedactValidationInput(logging.Filter):
    """Replaces a logged ``ValidationError``'s traceback (which quotes the input) with its
    error count, model and field paths."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError):
            paths = sorted({_path(e["loc"]) for e in error.errors(include_input=False)})
            record.msg = (
                f"{record.getMessage()}: {error.error_count()} validation error(s) for "
                f"{error.title} at {', '.join(paths)} (values not logged)"
            )
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def _path(loc: tuple[str | int, ...]) -> str:
    return (
        ".".join(
            str(part) if isinstance(part, int) or _FIELD_NAME.fullmatch(part) else "?"
            for part in loc
        )
        or "(body)"
    )


def operations_log() -> logging.Logger:
    """The service's own ``bespoke.*`` loggers at INFO on stderr (the service's log):
    champion swaps, reloads after an erasure, live scoring turned off. Idempotent."""
    logger = logging.getLogger("bespoke")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(RedactValidationInput())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def access_log() -> logging.Logger:
    """The access logger: one JSON line per request on stderr (the service's log)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def configure_service_logging() -> None:
    """Redact validation inputs on the loggers that log route exceptions and on every
    handler present (BentoML's own included). Idempotent."""
    operations_log()
    redact = RedactValidationInput()
    loggers = [logging.getLogger(name) for name in _EXCEPTION_LOGGERS]
    loggers += [logging.getLogger(), logging.getLogger("bentoml")]
    for logger in loggers:
        targets = [logger, *logger.handlers]
        for target in targets:
            if not any(isinstance(f, RedactValidationInput) for f in target.filters):
                target.addFilter(redact)
