"""A configuration file that reloads itself when it changes, keeping the last good version.

The JSON rules and the experiment definitions are edited while the service runs. A
:class:`WatchedFile` checks the file's (or a folder's files') modification time, size and
inode at most every ``interval`` seconds and loads it again when they changed. A change
that does not validate keeps what is in force and sets :attr:`WatchedFile.last_error`
(cleared by the next good load), so a typo never takes the service down. The first load
must succeed (it raises the loader's error). Safe to share between threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


def json_files(folder: Path) -> list[Path]:
    """The ``*.json`` files of a folder that count (no hidden or editor backup files)."""
    return sorted(
        p for p in folder.glob("*.json") if p.is_file() and not p.name.startswith((".", "~"))
    )


class WatchedFile(Generic[T]):
    """``load(path)`` kept current: :meth:`current` reloads when the files changed.

    ``error`` is the loader's validation error (kept as :attr:`last_error` on a bad
    change); ``unreadable(path, message)`` builds that error for a file that cannot be read
    at start; ``what`` names the content in logs.
    """

    def __init__(
        self,
        path: str | Path,
        load: Callable[[Path], T],
        *,
        error: type[Exception],
        unreadable: Callable[[str, str], Exception],
        what: str,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self._load = load
        self._error = error
        self._what = what
        self._clock = clock
        self._lock = threading.Lock()
        try:
            signature = self._signature()
        except OSError as failure:
            raise unreadable(str(path), f"cannot read: {failure.strerror or failure}") from None
        self._value = load(self.path)
        self._loaded_signature: Any = signature
        self._failed_signature: Any = None
        self._checked_at = clock()
        self.last_error: str | None = None
        self.generation = 1  # how many versions have been loaded
        self.loaded_at = time.time()

    def current(self) -> T:
        """What is in force now (reloaded first when the files changed)."""
        if self._clock() - self._checked_at < self.interval:
            return self._value
        with self._lock:
            if self._clock() - self._checked_at >= self.interval:
                self._refresh()
        return self._value

    def reload(self) -> bool:
        """Check now, whatever the interval; True when a new version was loaded."""
        with self._lock:
            return self._refresh()

    def _signature(self) -> Any:
        if self.path.is_dir():
            return tuple(
                (p.name, s.st_mtime_ns, s.st_size, s.st_ino)
                for p in json_files(self.path)
                for s in (p.stat(),)
            )
        s = self.path.stat()
        return (s.st_mtime_ns, s.st_size, s.st_ino)

    def _refresh(self) -> bool:
        self._checked_at = self._clock()
        try:
            signature = self._signature()
        except OSError as failure:
            if self._failed_signature != "unreadable":
                logger.warning(
                    "%s %s unreadable, keeping the previous ones: %s",
                    self._what,
                    self.path,
                    failure,
                )
            self._failed_signature = "unreadable"
            self.last_error = f"{self.path}: cannot read: {failure.strerror or failure}"
            return False
        if signature == self._loaded_signature:
            self._failed_signature = None
            self.last_error = None
            return False
        if signature == self._failed_signature:
            return False
        try:
            value = self._load(self.path)
        except self._error as failure:
            logger.warning(
                "%s %s invalid, keeping the previous ones: %s", self._what, self.path, failure
            )
            self._failed_signature = signature
            self.last_error = str(failure)
            return False
        self._value = value
        self._loaded_signature = signature
        self._failed_signature = None
        self.last_error = None
        self.generation += 1
        self.loaded_at = time.time()
        logger.info("%s %s reloaded", self._what, self.path)
        return True

    def status(self) -> dict[str, Any]:
        """For health and admin routes: what is loaded and the last problem."""
        return {
            "path": str(self.path),
            "generation": self.generation,
            "loaded_at": datetime.fromtimestamp(self.loaded_at, UTC).isoformat(),
            "last_error": self.last_error,
        }
