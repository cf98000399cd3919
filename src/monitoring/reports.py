"""What every HTML report shares: how it is written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_html(path: Path, text: str) -> None:
    """Write a report beside its place and rename it there: a reader never sees half a
    report, and a failure leaves none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".report-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        # mkstemp makes the file owner-only; a report is for people to read, as any file.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
