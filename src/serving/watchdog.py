"""Service workers that die with their server.

BentoML's supervisor starts each worker in a session of its own (``setsid``), so a kill
-9 of the server (or of its process group) leaves the workers running, re-parented and
still bound to the port: a restart then fails with "Address already in use". Each
worker therefore watches its parent: when the parent is gone it stops itself (SIGTERM:
uvicorn finishes the requests in flight and closes the socket), and exits hard if that
takes longer than a grace period.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

#: How often a worker looks at its parent.
POLL_S = 0.5
#: How long a worker whose parent died may take to stop before it exits hard.
GRACE_S = 10.0


def exit_with_parent(poll_s: float = POLL_S, grace_s: float = GRACE_S) -> threading.Thread | None:
    """Start a daemon thread that stops this process once its parent has died. Returns
    the thread, or ``None`` when this process has no parent to watch (it is already an
    orphan, or was started by init)."""
    parent = os.getppid()
    if parent == 1:
        return None
    thread = threading.Thread(
        target=_watch, args=(parent, poll_s, grace_s), name="bespoke-parent-watch", daemon=True
    )
    thread.start()
    return thread


def _watch(parent: int, poll_s: float, grace_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    log.warning("the server (pid %d) is gone: this worker (pid %d) stops", parent, os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os._exit(1)
