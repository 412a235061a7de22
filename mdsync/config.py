"""One frozen Settings object: built-in defaults < config.toml < MDSYNC_* environment < flags.

Every key is declared here with its default; `config.example.toml` documents each one (a test
checks that the two agree). Unknown keys and wrong types fail at start with the key named.
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "MDSYNC_"
CONFIG_ENV = "MDSYNC_CONFIG"
CLIENT_ENV = ("MDSYNC_TOKEN",)  # read by `mdsync sync` (a client), not settings of the server
MiB = 1024 * 1024


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Path("./mdsync-data")
    public_url: str | None = None
    secret: str | None = None
    shutdown_timeout: float = Field(8.0, gt=0)
    header_timeout: float = Field(20.0, gt=0)
    idle_timeout: float = Field(300.0, gt=0)
    trusted_proxies: list[str] = ["127.0.0.1", "::1"]
    backup_before_migrate: bool = False


class AuthSettings(Section):
    registration: Literal["open", "invite", "closed"] = "invite"
    access_token_ttl: int = Field(900, gt=0)
    refresh_token_ttl: int = Field(2592000, gt=0)
    login_failures_per_account: int = Field(5, ge=1)
    login_attempts_per_address: int = Field(30, ge=1)
    register_attempts_per_address: int = Field(10, ge=1)
    refresh_attempts_per_address: int = Field(120, ge=1)
    password_min_length: int = Field(8, ge=1, le=1024)
    argon2_time_cost: int = Field(3, ge=1)
    argon2_memory_cost: int = Field(65536, ge=8)
    argon2_parallelism: int = Field(4, ge=1)
    recent_sign_in_seconds: int = Field(300, ge=0)
    setup_token_ttl: int = Field(86400, gt=0)


class CorsSettings(Section):
    origins: list[str] = []


class DatabaseSettings(Section):
    # unset: SQLite in the data dir (mdsync.db); "postgresql://user:pass@host:5432/db": PostgreSQL
    url: str | None = None
    pool_size: int = Field(8, ge=1, le=1000)  # PostgreSQL: read connections (the writer and LISTEN have their own)
    statement_timeout: float = Field(30.0, gt=0)  # PostgreSQL: seconds one statement may run

    @field_validator("url")
    @classmethod
    def _known_engine(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (leave it unset for SQLite in the data dir)")
        return url


class LimitsSettings(Section):
    max_body_bytes: int = Field(1 * MiB, gt=0)
    max_ws_message_bytes: int = Field(16 * MiB, gt=0)
    max_upload_bytes: int = Field(100 * MiB, gt=0)
    max_document_bytes: int = Field(16 * MiB, gt=0)
    max_import_bytes: int = Field(1024 * MiB, gt=0)


class S3Settings(Section):
    endpoint: str | None = None
    bucket: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    path_style: bool = False


class StorageSettings(Section):
    backend: Literal["local", "s3"] = "local"
    signed_url_ttl: int = Field(3600, gt=0)
    s3: S3Settings = S3Settings()


class ReplicaSettings(Section):
    # litestream's replica URL; an empty value (MDSYNC_REPLICA__URL=) means none
    url: Annotated[str | None, BeforeValidator(lambda v: v or None)] = Field(
        None, pattern=r"^(s3|gs|abs|sftp|file|webdav|webdavs|oss|nats)://[^\s]+$")
    sync_interval: float = Field(1.0, gt=0)
    poll_interval: float = Field(1.0, gt=0)
    max_lag: float = Field(30.0, gt=0)
    shutdown_timeout: float = Field(5.0, gt=0)


class ProviderSettings(Section):
    api_key: str | None = None
    base_url: str


class OpenAISettings(ProviderSettings):
    base_url: str = "https://api.openai.com/v1"


class AnthropicSettings(ProviderSettings):
    base_url: str = "https://api.anthropic.com"


class AISettings(Section):
    openai: OpenAISettings = OpenAISettings()
    anthropic: AnthropicSettings = AnthropicSettings()
    allowed_base_urls: list[str] = []
    default_max_tokens: int = Field(4096, gt=0)
    context_max_chars: int = Field(100000, gt=0)
    connect_timeout: float = Field(10.0, gt=0)
    idle_timeout: float = Field(300.0, gt=0)


class MetricsSettings(Section):
    token: str | None = None


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class CollabSettings(Section):
    room_grace_seconds: float = Field(10.0, ge=0)
    # unset: 0.2 s on one node, 0.05 s with several (`flush_delay`)
    flush_delay_seconds: float | None = Field(None, ge=0, le=0.5)
    snapshot_after_updates: int = Field(1000, ge=1)
    snapshot_after_bytes: int = Field(1 * MiB, ge=1024)
    max_connections_per_user: int = Field(5000, ge=1)
    max_connections_per_document: int = Field(1000, ge=1)
    max_connections_per_user_per_document: int = Field(64, ge=1)
    max_connections_per_share_link: int = Field(200, ge=1)
    reserved_writer_connections: int = Field(100, ge=0)
    slow_peer_bytes: int = Field(8 * MiB, ge=65536)
    slow_peer_seconds: float = Field(10.0, gt=0)
    heartbeat_seconds: float = Field(30.0, ge=0)
    hocuspocus_ping_seconds: float = Field(20.0, ge=0)
    projection_debounce: float = Field(1.0, ge=0)
    projection_max_delay: float = Field(1.5, gt=0, le=2.0)

    def flush_delay(self, clustered: bool) -> float:
        """The update log's group-commit window in effect. Unset, 0.2 s on one node: at a few
        updates a second per document each commit costs the writer ~0.5 ms of CPU (measured
        with the bench's S1: 0.05 s made ~300 commits of 2 000 updates, 0.2 s ~100, and the
        server's CPU per delivered update fell ~10 %), and nothing waits on it there (a
        Hocuspocus client's ack hurries its commit; a y-websocket client resends what a crash
        lost when it reconnects). With several nodes 0.05 s: another node hears of an update
        only after its commit, so the window is the floor of cross-node latency."""
        if self.flush_delay_seconds is not None:
            return self.flush_delay_seconds
        return 0.05 if clustered else 0.2


class SyncSettings(Section):
    etag_retention_days: float = Field(30.0, gt=0)
    changes_retention_days: float = Field(90.0, ge=0)


class DocumentsSettings(Section):
    trash_retention_days: float = Field(30.0, ge=0)


class WorkspacesSettings(Section):
    purge_grace_seconds: int = Field(30 * 24 * 3600, ge=0)
    purge_interval: float = Field(3600.0, gt=0)


class VersionsSettings(Section):
    idle_seconds: float = Field(300.0, gt=0)
    max_interval_seconds: float = Field(1800.0, gt=0)
    prune_interval_seconds: float = Field(3600.0, gt=0)


class TipTapSettings(Section):
    # node and mark names of the editor's extensions beyond StarterKit, task list, table, image, link
    extra_nodes: list[str] = []
    extra_marks: list[str] = []


class ClusterSettings(Section):
    # unset: one node; "redis://HOST:PORT[/N]": several nodes on one PostgreSQL coordinate through it
    redis_url: Annotated[str | None, BeforeValidator(lambda v: v or None)] = Field(
        None, pattern=r"^(redis|rediss|unix)://[^\s]+$")


class Settings(Section):
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    auth: AuthSettings = AuthSettings()
    cors: CorsSettings = CorsSettings()
    limits: LimitsSettings = LimitsSettings()
    storage: StorageSettings = StorageSettings()
    replica: ReplicaSettings = ReplicaSettings()
    ai: AISettings = AISettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()
    workspaces: WorkspacesSettings = WorkspacesSettings()
    sync: SyncSettings = SyncSettings()
    documents: DocumentsSettings = DocumentsSettings()
    collab: CollabSettings = CollabSettings()
    versions: VersionsSettings = VersionsSettings()
    tiptap: TipTapSettings = TipTapSettings()
    cluster: ClusterSettings = ClusterSettings()

    @model_validator(mode="after")
    def _replica_needs_sqlite(self) -> Settings:
        if self.database.url is not None and self.replica.url is not None:
            raise ValueError("replica.url streams the SQLite file with litestream and cannot be used with a "
                             "PostgreSQL database.url: back PostgreSQL up with its own tools (pg_dump, "
                             "`mdsync backup`, or your provider's backups) and unset replica.url")
        return self

    @model_validator(mode="after")
    def _cluster_needs_shared_storage(self) -> Settings:
        # every node must see every commit and every attachment: a data dir is one machine's
        if self.cluster.redis_url is not None and self.database.url is None:
            raise ValueError("cluster.redis_url is set but database.url is not: several nodes share one "
                             "PostgreSQL database (a SQLite file belongs to one node); set database.url")
        if self.cluster.redis_url is not None and not self.server.secret:
            raise ValueError("cluster.redis_url is set but server.secret is not: every node must sign and "
                             "check tokens with the same secret (a generated data_dir/secret is one node's); "
                             "set server.secret to one long random value on every node")
        if self.cluster.redis_url is not None and self.storage.backend != "s3":
            raise ValueError("cluster.redis_url is set but storage.backend is \"local\": attachments "
                             "must be on S3 when several nodes run (each node would see only its own "
                             "files); set storage.backend = \"s3\" and [storage.s3]")
        return self

    @property
    def clustered(self) -> bool:
        """Whether several nodes share the database (cluster.redis_url is set)."""
        return self.cluster.redis_url is not None

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def engine(self) -> str:
        """The database engine: "sqlite" (the default, in the data dir) or "postgresql"."""
        return "sqlite" if self.database.url is None else "postgresql"

    @property
    def db_path(self) -> Path:
        return self.server.data_dir / "mdsync.db"

    @property
    def public_url(self) -> str:
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        return f"http://{self.server.host}:{self.server.port}"


class ConfigError(Exception):
    """A setting is unknown or has the wrong type; the message names the key."""


def load(config_file: str | os.PathLike | None = None, environ: dict[str, str] | None = None,
         overrides: dict[str, Any] | None = None) -> Settings:
    """Build the Settings: defaults < config file < MDSYNC_* variables < overrides (flags).

    `overrides` uses dotted keys (`{"server.port": 9000}`); None values are ignored.
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    path = config_file or environ.get(CONFIG_ENV)
    if path:
        try:
            with open(path, "rb") as fh:
                _merge(merged, tomllib.load(fh))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    _merge(merged, _from_environment(environ))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _merge(merged, _nest(dotted.split("."), value))
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _from_environment(environ: dict[str, str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or name in CLIENT_ENV:
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        value: Any = raw
        if raw.strip().startswith(("[", "{")):
            try:
                value = json.loads(raw)
            except ValueError:
                raise ConfigError(f"{name}: not a valid JSON list or table") from None
        _merge(result, _nest(keys, value))
    return result


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    for key in reversed(keys):
        value = {key: value}
    return value


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        if not key:  # a rule across sections (Settings' own validators)
            lines.append(err["msg"].removeprefix("Value error, "))
        elif err["type"] == "extra_forbidden":
            lines.append(f"unknown setting {key!r}")
        else:
            lines.append(f"setting {key!r}: {err['msg']}")
    return "; ".join(lines)


def ensure_secret(settings: Settings) -> str:
    """The server secret: configured, else `data_dir/secret` (created once, mode 0600).

    The file is written whole under a temporary name and then linked into place, so a crash
    mid-write can never leave an empty secret that every later start would sign tokens with.
    """
    if settings.server.secret:
        return settings.server.secret
    path = settings.data_dir / "secret"
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = None
    if existing:
        return existing
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    temp = path.with_name(f".secret-{secrets.token_hex(8)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if existing is None:
            try:
                os.link(temp, path)  # fails if another process created it meanwhile: use theirs
            except FileExistsError:
                return path.read_text().strip() or ensure_secret(settings)
        else:
            os.replace(temp, path)  # an empty file left by a crash: replace it
    finally:
        temp.unlink(missing_ok=True)
    return value
