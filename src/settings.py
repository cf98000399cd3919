"""The one configuration object.

Every setting can come from the environment with the ``BESPOKE_`` prefix (or a ``.env``
file in the working directory). Reading settings never creates a file or a folder; the
places they name are created by the code that writes there.
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

HMAC_KEY_FILE = "hmac.key"
#: Under the secrets folder: the keys of HMAC key rotations, ``v2.key``, ``v3.key``… (see
#: ``bespoke.privacy.rotation``).
KEY_ROTATIONS_DIR = "hmac-rotations"
#: A SQLite URL is this prefix and a path (``sqlite:////abs/path`` is absolute, as in
#: SQLAlchemy and MLflow).
SQLITE_PREFIX = "sqlite:///"
#: The URL schemes of a Redis online store (``BESPOKE_ONLINE_STORE_URL``).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
ONLINE_STORE_SCHEMES = (SQLITE_PREFIX, *REDIS_SCHEMES)
#: PostgreSQL URLs (Optuna's studies, MLflow's tracking) name psycopg2, the ``postgres``
#: extra's driver; the Optuna study storages supported (SQLAlchemy URLs).
POSTGRESQL_PREFIX, POSTGRESQL_DRIVER = "postgresql://", "postgresql+psycopg2://"
OPTUNA_STORAGE_SCHEMES = (SQLITE_PREFIX, POSTGRESQL_PREFIX, POSTGRESQL_DRIVER)


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` holding Bespoke's ``pyproject.toml``.

    A checkout keeps its state (``var/``, ``mlruns/``) at its root whatever folder a
    command runs from; outside a checkout the working directory is the root.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and 'name = "bespoke"' in pyproject.read_text(errors="ignore"):
            return folder
    return here


#: Retention of the tables that only help operate the product; behaviour itself (the
#: lake's events) is kept until the installation sets a period for it.
DEFAULT_RETENTION_DAYS = {
    "lake:quarantine": 90,
    "online:refused_aliases": 90,
    "online:segment_changes": 365,
}


class PseudonymKey(bytes):
    """The HMAC key of pseudonyms (the bytes: version 1's key) with the keys of its
    rotations, oldest first. A pseudonym under version *n* is version *n-1*'s pseudonym
    keyed again with rotation *n*'s key, so that rotating re-keys stored pseudonyms without
    the raw values they came from (``bespoke.features.privacy.pseudonym``)."""

    rotations: tuple[bytes, ...]

    def __new__(cls, base: bytes, rotations: tuple[bytes, ...] = ()) -> PseudonymKey:
        key = super().__new__(cls, base)
        key.rotations = tuple(rotations)
        return key

    @property
    def version(self) -> int:
        return 1 + len(self.rotations)

    def __reduce__(self) -> tuple[type, tuple[bytes, tuple[bytes, ...]]]:
        return (PseudonymKey, (bytes(self), self.rotations))


class Settings(BaseSettings):
    """Where Bespoke keeps its state and which secrets it uses."""

    model_config = SettingsConfigDict(
        env_prefix="BESPOKE_", env_file=".env", extra="ignore", validate_default=True
    )

    root: Path = Field(
        default_factory=find_project_root,
        description="Project root; the defaults of home and mlruns are relative to it.",
    )
    home: Path | None = Field(
        default=None,
        description="State folder: the event lake, secrets, inbox. Default <root>/var.",
    )
    lake_url: str | None = Field(
        default=None,
        description="Event lake location: a folder or any fsspec URL. Default <home>/lake.",
    )
    datasets_dir: Path | None = Field(
        default=None,
        description="Folder holding the public datasets (ml-100k/, ml-1m/, cdnow/).",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, description="Default sqlite:///<root>/mlruns/mlflow.db."
    )
    mlflow_artifacts_dir: Path | None = Field(
        default=None, description="Where MLflow stores artifacts. Default <root>/mlruns/artifacts."
    )
    optuna_storage_url: str | None = Field(
        default=None,
        description="Where Optuna keeps the tuning studies: sqlite:///<path> (one machine) or "
        "postgresql://user@host:5432/db (several workers and hosts sharing studies). "
        "Unset: sqlite:///<root>/mlruns/optuna.db (bespoke.training.tune.study_storage).",
    )
    online_store_url: str | None = Field(
        default=None,
        description=(
            "Online profile store and event inbox, shared by the service's workers. "
            "Default sqlite:///<home>/online.db (SQLite in WAL mode); redis://host:6379/0 "
            "(or rediss://, unix://): Redis, shared by replicas on several hosts."
        ),
    )
    control_store_url: str | None = Field(
        default=None,
        description="The control plane's SQL database: consent ledger, suppression list, API "
        "keys, experiment ledger, webhook outbox, deletion requests. Default "
        "sqlite:///<home>/online.db (the embedded online store's own file); with a Redis "
        "online store, replicas on several hosts need it on a shared disk.",
    )
    reports_dir: Path | None = Field(
        default=None,
        description="Monitoring reports, one folder per run (<reports_dir>/<timestamp>/). "
        "Default <root>/reports.",
    )
    tuned_params_file: Path | None = Field(
        default=None,
        description="Tuned parameters per dataset, protocol and model, read by training and "
        "written by tuning. Default the packaged bespoke/training/tuned_params.json.",
    )
    # --- the service (bentoml serve bespoke.serving.service:Personalization) ---------
    serving_dataset: str = Field(default="ml-100k", description="Dataset the service serves.")
    serving_workers: int = Field(default=1, ge=1, description="Worker processes of the service.")
    serving_max_body_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        description="Largest request body the service reads; a larger one is answered 413.",
    )
    rules_path: Path | None = Field(
        default=None,
        description="The JSON rules: a file or a folder. Default the shipped src/serving/rules/.",
    )
    experiments_path: Path | None = Field(
        default=None,
        description="The experiment definitions (a JSON file, hot-reloaded like the rules); "
        "unset: no experiment runs and every answer is the control.",
    )
    model_source: Literal["registry", "bento"] | None = Field(
        default=None,
        description="Where the service loads its models: the MLflow registry's @champion "
        "aliases, or the copies packaged into a Bento. Default bento inside a built Bento, "
        "registry otherwise.",
    )
    model_poll_s: float = Field(
        default=30.0,
        ge=0,
        description="Seconds between two looks at the registry's @champion aliases (0: never).",
    )
    access_log: bool = Field(
        default=True,
        description="One JSON line per request on the service's stderr (request id, route, "
        "status, duration, key name; never user ids or PII).",
    )
    bentoml_access_log: bool = Field(
        default=False, description="BentoML's own access log (a per-request overhead)."
    )
    tracing: bool = Field(
        default=False,
        description="OpenTelemetry's per-request instrumentation (a per-request overhead).",
    )
    webhook_url: str | None = Field(
        default=None,
        description="Where outgoing webhooks (segment_changed, …) are POSTed; unset: none are "
        "sent. Each is signed with HMAC-SHA256 (header Bespoke-Signature), retried with "
        "exponential backoff, and dead-lettered after webhook_max_attempts.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="The key webhooks are signed with. When unset, a random one is created once "
        "in <home>/secrets/webhook.key (give the receiver that file's content).",
    )
    webhook_max_attempts: int = Field(
        default=6, ge=1, description="Delivery attempts before a webhook is dead-lettered."
    )
    webhook_backoff_s: float = Field(
        default=2.0, gt=0, description="Seconds before the first retry; doubled on each retry."
    )
    webhook_timeout_s: float = Field(
        default=5.0, gt=0, description="Seconds a webhook receiver has to answer."
    )
    cart_abandon_minutes: float = Field(
        default=30.0, gt=0,
        description="An add-to-cart with no purchase after it for this long is announced by "
        "the cart_abandoned webhook (once per cart).",
    )  # fmt: skip
    churn_alert_threshold: float = Field(
        default=0.5, gt=0, lt=1,
        description="A person's live churn probability crossing this (up or down) is announced "
        "by the churn_crossed webhook.",
    )  # fmt: skip
    event_stream_url: str | None = Field(
        default=None,
        description="A Redis URL (redis://host:6379/0): /v1/events appends to its stream and "
        "`bespoke stream consume` workers apply it (bespoke.stream.events). Unset: the "
        "service applies events itself.",
    )
    engine: Literal["duckdb", "spark"] = Field(
        default="duckdb",
        description="What runs the lake's batch queries (training sets, person features, KPI "
        "aggregates): DuckDB in-process, or Apache Spark (the `spark` extra and Java 17) at "
        "spark_master. Both run the same SQL (bespoke.engine).",
    )
    spark_master: str = Field(
        default="local[*]",
        description="The Spark master when engine=spark: local[N] for one machine, "
        "spark://host:7077 or yarn/k8s://… for a cluster.",
    )
    inbound_webhooks_path: Path | None = Field(
        default=None,
        description="A JSON file of the commerce platforms that may POST orders to "
        "/v1/webhooks/<source>: each one's signature scheme, secret and field mapping "
        "(see bespoke.channels.inbound). Unset: the route answers 404.",
    )
    retention_days: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_RETENTION_DAYS),
        description=(
            "How many days person data is kept, per table (bespoke privacy retention "
            'deletes older rows), as JSON, e.g. {"lake:events": 730, "lake:quarantine": 90}. '
            "A table not named is kept as long as it is not erased."
        ),
    )
    hmac_key: SecretStr | None = Field(
        default=None,
        description=(
            "Key for the HMAC-SHA256 pseudonyms of PII. When unset, a random key is created "
            "once in <home>/secrets/hmac.key and reused; changing it changes every pseudonym."
        ),
    )

    @field_validator(
        "root",
        "home",
        "datasets_dir",
        "mlflow_artifacts_dir",
        "reports_dir",
        "rules_path",
        "experiments_path",
        "tuned_params_file",
        "inbound_webhooks_path",
    )
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @field_validator("optuna_storage_url")
    @classmethod
    def _study_storage(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(OPTUNA_STORAGE_SCHEMES):
            raise ValueError(
                f"BESPOKE_OPTUNA_STORAGE_URL (optuna_storage_url) {value!r} is not a study "
                "storage Bespoke supports: use sqlite:///<path> or "
                "postgresql://user@host:5432/database"
            )
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if self.home is None:
            self.home = self.root / "var"
        if self.lake_url is None:
            self.lake_url = str(self.home / "lake")
        elif "://" not in self.lake_url:
            self.lake_url = str(Path(self.lake_url).expanduser().resolve())
        if self.online_store_url is None:
            self.online_store_url = f"{SQLITE_PREFIX}{self.home / 'online.db'}"
        elif self.online_store_url.startswith(SQLITE_PREFIX):
            path = Path(self.online_store_url.removeprefix(SQLITE_PREFIX)).expanduser()
            self.online_store_url = f"{SQLITE_PREFIX}{path.resolve()}"
        elif not self.online_store_url.startswith(ONLINE_STORE_SCHEMES):
            raise ValueError(
                f"BESPOKE_ONLINE_STORE_URL={self.online_store_url!r}: expected "
                f"{SQLITE_PREFIX}<path> (SQLite) or redis://, rediss://, unix:// (Redis)"
            )
        self._control_store_default()
        if self.mlflow_artifacts_dir is None:
            self.mlflow_artifacts_dir = self.root / "mlruns" / "artifacts"
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"sqlite:///{self.root / 'mlruns' / 'mlflow.db'}"
        if self.optuna_storage_url and self.optuna_storage_url.startswith(SQLITE_PREFIX):
            path = Path(self.optuna_storage_url.removeprefix(SQLITE_PREFIX)).expanduser()
            self.optuna_storage_url = f"{SQLITE_PREFIX}{path.resolve()}"
        # SQLAlchemy 2.1 reads postgresql:// as psycopg 3; the postgres extra installs psycopg2.
        for name in ("optuna_storage_url", "mlflow_tracking_uri"):
            value = getattr(self, name)
            if value and value.startswith(POSTGRESQL_PREFIX):
                setattr(self, name, POSTGRESQL_DRIVER + value.removeprefix(POSTGRESQL_PREFIX))
        if self.reports_dir is None:
            self.reports_dir = self.root / "reports"
        return self

    def _control_store_default(self) -> None:
        """The control plane is the SQLite online store's own file (one file, as it always
        was); beside a Redis store, a SQLite file of its own (``<home>/online.db``)."""
        online = self.online_store_url or ""
        if self.control_store_url is None:
            embedded = online.startswith(SQLITE_PREFIX)
            self.control_store_url = (
                online if embedded else f"{SQLITE_PREFIX}{self.home / 'online.db'}"
            )
            return
        if not self.control_store_url.startswith(SQLITE_PREFIX):
            raise ValueError(
                f"BESPOKE_CONTROL_STORE_URL={self.control_store_url!r}: expected "
                f"{SQLITE_PREFIX}<path> (a SQLite file)"
            )
        path = Path(self.control_store_url.removeprefix(SQLITE_PREFIX)).expanduser()
        self.control_store_url = f"{SQLITE_PREFIX}{path.resolve()}"
        if online.startswith(SQLITE_PREFIX) and self.control_store_url != online:
            raise ValueError(
                f"BESPOKE_CONTROL_STORE_URL={self.control_store_url!r} differs from the SQLite "
                f"online store {online!r}, which keeps the control plane in its own file: "
                "set it only with a Redis BESPOKE_ONLINE_STORE_URL"
            )

    def as_environment(self) -> dict[str, str]:
        """The ``BESPOKE_*`` variables under which another process (a service, a job, a
        CLI call) reads these same locations; the HMAC key is left out (a secret: the
        other process finds the generated one under the same home)."""
        names = ("root", "home", "lake_url", "datasets_dir", "mlflow_tracking_uri",
                 "mlflow_artifacts_dir", "optuna_storage_url", "online_store_url",
                 "control_store_url",
                 "reports_dir")  # fmt: skip
        return {
            f"BESPOKE_{name.upper()}": str(value)
            for name in names
            if (value := getattr(self, name)) is not None
        }

    @property
    def secrets_dir(self) -> Path:
        assert self.home is not None
        return self.home / "secrets"

    @property
    def vault_dir(self) -> Path:
        """The PII vault's records and (wrapped) data keys (see ``bespoke.identity.vault``)."""
        assert self.home is not None
        return self.home / "vault"

    @property
    def audit_file(self) -> Path:
        """The hash-chained audit log (see ``bespoke.privacy.audit``); its head beside it."""
        assert self.home is not None
        return self.home / "audit" / "audit.jsonl"

    @property
    def vault_key_file(self) -> Path:
        """The vault's master key, created on first use; kept apart from the vault."""
        return self.secrets_dir / "vault.key"

    @property
    def hmac_key_file(self) -> Path:
        """Where the generated key is kept when ``hmac_key`` is unset."""
        return self.secrets_dir / HMAC_KEY_FILE

    @property
    def key_rotations_dir(self) -> Path:
        """The keys of completed HMAC key rotations (``v2.key``…) and a running one's."""
        return self.secrets_dir / KEY_ROTATIONS_DIR

    def pseudonym_key(self) -> PseudonymKey:
        """The HMAC key, creating and keeping a random one on first use when none is set,
        with the keys of every completed rotation."""
        if self.hmac_key is not None:
            base = self.hmac_key.get_secret_value().encode()
        else:
            base = kept_secret(self.hmac_key_file).encode()
        return PseudonymKey(base, rotation_keys(self.key_rotations_dir))

    def webhook_key(self) -> bytes:
        """The webhook signing key, creating and keeping a random one when none is set."""
        if self.webhook_secret is not None:
            return self.webhook_secret.get_secret_value().encode()
        return kept_secret(self.secrets_dir / "webhook.key").encode()

    def dataset_path(self, name: str) -> Path:
        """``<datasets_dir>/<name>``, with a message that says how to set it when unset."""
        if self.datasets_dir is None:
            raise FileNotFoundError(
                f"no datasets folder is set: export BESPOKE_DATASETS_DIR=/path/to/data "
                f"(holding {name}/) or pass the path explicitly"
            )
        return self.datasets_dir / name


def kept_secret(path: Path) -> str:
    """The 256-bit random secret (hex) kept in ``path``, created (mode 0600) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two processes starting together must not each write their own secret.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
    return path.read_text().strip()


def rotation_keys(folder: Path) -> tuple[bytes, ...]:
    """The keys of completed rotations kept in ``folder`` (``v2.key``, ``v3.key``…), in
    version order; they must run without a gap from version 2."""
    found = {}
    if folder.is_dir():
        for path in folder.glob("v*.key"):
            number = path.stem[1:]
            if number.isdigit():
                found[int(number)] = path.read_text().strip().encode()
    if sorted(found) != list(range(2, 2 + len(found))):
        raise RuntimeError(
            f"the HMAC key rotations in {folder} skip a version ({sorted(found)}): "
            "every version from v2 on must be there"
        )
    return tuple(found[v] for v in sorted(found))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first call."""
    return Settings()
