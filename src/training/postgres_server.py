"""A private PostgreSQL cluster on this machine, for a local run, a test or a benchmark:
Debian's ``postgresql`` binaries (``initdb``, ``pg_ctl``), a fresh cluster in a temporary
folder, listening on a free loopback port (its unix socket in that folder, so no system
folder is needed), trust authentication for the ``postgres`` role, the named databases
created, everything removed by :meth:`PostgresServer.stop`.

Where it fits: ``BESPOKE_OPTUNA_STORAGE_URL`` and ``BESPOKE_MLFLOW_TRACKING_URI`` take a
``postgresql://`` URL (:mod:`bespoke.training.tune`, :mod:`bespoke.training.tracking`);
this starts a server to point them at without installing or configuring one.

PostgreSQL refuses to run as root: as root, the cluster belongs to the ``postgres`` system
user (created by Debian's package) and its commands run through ``runuser``; as anyone
else they run directly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Where Debian's ``postgresql-<version>`` package puts the server's binaries (not on PATH).
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
#: The role a cluster's ``initdb`` creates, trusted on loopback.
SUPERUSER = "postgres"


def postgres_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: PATH's, else the newest of Debian's
    ``/usr/lib/postgresql/<version>/bin``; None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:  # a link on PATH (/usr/local/bin/initdb): its folder holds the other tools
        return Path(found).resolve().parent
    versions = [
        folder
        for folder in DEBIAN_BINARIES.glob("*/bin")
        if (folder / "initdb").is_file() and folder.parent.name.isdigit()
    ]
    return max(versions, key=lambda folder: int(folder.parent.name)) if versions else None


@dataclass
class PostgresServer:
    """A running private cluster: its folder, port and binaries."""

    folder: Path
    port: int
    binaries: Path
    #: The OS user the cluster belongs to (None: this process's own).
    owner: str | None

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        """A SQLAlchemy URL for ``database`` (what Optuna and MLflow take)."""
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE name`` (fails when it exists)."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are ended) and remove its folder."""
        try:
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30")
        except subprocess.CalledProcessError:
            _kill_postmaster(self.data_dir)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *arguments: str) -> str:
        command = [str(self.binaries / program), *arguments]
        if self.owner is not None:
            command = ["runuser", "-u", self.owner, "--", *command]
        try:
            return subprocess.run(
                command, capture_output=True, text=True, check=True, timeout=120
            ).stdout
        except subprocess.CalledProcessError as error:
            # the tool's own words say why (a port taken, a permission, a locale)
            error.add_note(f"{program} said: {error.stderr.strip() or error.stdout.strip()}")
            raise


def start_postgres(
    databases: Sequence[str] = ("bespoke",), *, durable: bool = False, timeout: float = 60.0
) -> PostgresServer:
    """Start a fresh cluster in a new temporary folder and create ``databases``.

    ``durable=False`` (a scratch cluster for tests and benchmarks of our own code) turns
    off fsync and synchronous commit: a crash of this machine may lose the cluster, which
    is removed at the end anyway. Raises ``FileNotFoundError`` when PostgreSQL is not
    installed, ``RuntimeError`` when the server does not start.
    """
    binaries = postgres_binaries()
    if binaries is None:
        raise FileNotFoundError(
            "PostgreSQL's initdb was not found (on PATH or under /usr/lib/postgresql/*/bin): "
            "install Debian's postgresql package (scripts/test-system-packages does it)"
        )
    owner = SUPERUSER if os.geteuid() == 0 else None
    # Under the system temp folder (world-traversable), not a caller's private one: as
    # root, the postgres user must reach it.
    folder = Path(tempfile.mkdtemp(prefix="bespoke-postgres-"))
    if owner is not None:
        shutil.chown(folder, user=owner, group=owner)
    server = PostgresServer(folder, free_port(), binaries, owner)
    try:
        server._run("initdb", "-D", str(server.data_dir), "-U", SUPERUSER, "--auth=trust",
                    "--encoding=UTF8", "--no-locale", "--no-sync")  # fmt: skip
        options = [f"-p {server.port}", "-c listen_addresses=127.0.0.1",
                   f"-c unix_socket_directories={folder}"]  # fmt: skip
        if not durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        server._run("pg_ctl", "start", "-D", str(server.data_dir), "-l", str(folder / "server.log"),
                    "-w", "-t", str(int(timeout)), "-o", " ".join(options))  # fmt: skip
        for name in databases:
            server.create_database(name)
    except (OSError, subprocess.SubprocessError) as error:  # runuser missing, a tool failed
        said = str(getattr(error, "stderr", None) or "").strip()
        log = folder / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        server.stop()
        raise RuntimeError(
            f"PostgreSQL did not start in {folder}: {error}\n{said}\n{tail}".strip()
        ) from error
    return server


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _kill_postmaster(data_dir: Path) -> None:
    """The last resort when ``pg_ctl stop`` fails: SIGKILL the postmaster its pid file names
    (its backends exit when it is gone)."""
    pid_file = data_dir / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass  # no pid file or no such process: nothing is left running
