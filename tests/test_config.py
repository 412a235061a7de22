"""Settings: precedence (defaults < config.toml < MDSYNC_* environment < flags), failures that
name the key, the documented example file, and the generated secret."""

from __future__ import annotations

import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from mdsync import config
from mdsync.app import create_app
from tests.processes import MDSYNC, ROOT, subprocess_env

EXAMPLE = ROOT / "config.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


# -- precedence ---------------------------------------------------------------------------------
def test_defaults_without_any_configuration():
    settings = config.load(None, environ={})
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.data_dir == Path("./mdsync-data")
    assert settings.auth.registration == "invite"
    assert (settings.auth.access_token_ttl, settings.auth.refresh_token_ttl) == (900, 2592000)
    assert (settings.auth.login_failures_per_account, settings.auth.login_attempts_per_address) == (5, 30)
    assert settings.cors.origins == []
    assert settings.limits.max_body_bytes == 1024 * 1024
    assert settings.public_url == "http://127.0.0.1:8080"


def test_each_layer_overrides_the_one_below(tmp_path):
    toml = write(tmp_path, '[server]\nport = 1111\nhost = "0.0.0.0"\n[auth]\nregistration = "open"\n'
                           '[storage.s3]\nbucket = "from-file"\n')
    env = {"MDSYNC_SERVER__PORT": "2222", "MDSYNC_STORAGE__S3__BUCKET": "from-env"}
    flags = {"server.port": 3333, "server.host": None}  # None: the flag was not given

    settings = config.load(toml, environ=env, overrides=flags)
    assert settings.server.port == 3333                 # flag beats env
    assert settings.storage.s3.bucket == "from-env"     # env beats file (nested table)
    assert settings.server.host == "0.0.0.0"            # file beats default; an absent flag changes nothing
    assert settings.auth.registration == "open"
    assert config.load(toml, environ=env).server.port == 2222
    assert config.load(toml, environ={}).server.port == 1111
    assert config.load(None, environ={}).server.port == 8080
    # the file can come from $MDSYNC_CONFIG too; --config wins over it
    assert config.load(None, environ={"MDSYNC_CONFIG": str(toml)}).server.port == 1111
    other = tmp_path / "other.toml"
    other.write_text("[server]\nport = 4444\n")
    assert config.load(other, environ={"MDSYNC_CONFIG": str(toml)}).server.port == 4444


def test_environment_values_are_written_as_in_toml():
    settings = config.load(None, environ={
        "MDSYNC_CORS__ORIGINS": '["tauri://localhost", "http://tauri.localhost"]',
        "MDSYNC_STORAGE__S3__PATH_STYLE": "true",
        "MDSYNC_SERVER__SHUTDOWN_TIMEOUT": "2.5",
        "MDSYNC_AUTH__REGISTRATION": "closed",
        "UNRELATED": "ignored",
    })
    assert settings.cors.origins == ["tauri://localhost", "http://tauri.localhost"]
    assert settings.storage.s3.path_style is True
    assert settings.server.shutdown_timeout == 2.5
    assert settings.auth.registration == "closed"


def test_settings_are_frozen():
    settings = config.load(None, environ={})
    with pytest.raises(Exception):
        settings.server.port = 1  # type: ignore[misc]


# -- failures name the key ----------------------------------------------------------------------
@pytest.mark.parametrize("text, key", [
    ("[server]\nprot = 8080\n", "server.prot"),
    ("[nonsense]\nx = 1\n", "nonsense"),
    ("[storage.s3]\nbukket = 'x'\n", "storage.s3.bukket"),
    ("[server]\nport = 'eighty'\n", "server.port"),
    ("[server]\nport = 70000\n", "server.port"),
    ("[auth]\nregistration = 'sometimes'\n", "auth.registration"),
    ("[cors]\norigins = 'tauri://localhost'\n", "cors.origins"),
    ("server = 5\n", "server"),
])
def test_bad_file_values_name_the_key(tmp_path, text, key):
    with pytest.raises(config.ConfigError) as caught:
        config.load(write(tmp_path, text), environ={})
    assert f"'{key}'" in str(caught.value)


@pytest.mark.parametrize("name, value, key", [
    ("MDSYNC_SERVER__PROT", "1", "server.prot"),
    ("MDSYNC_SERVER__PORT", "abc", "server.port"),
    ("MDSYNC_AUTH__ACCESS_TOKEN_TTL", "-5", "auth.access_token_ttl"),
    ("MDSYNC_CORS__ORIGINS", "[not json", "MDSYNC_CORS__ORIGINS"),
])
def test_bad_environment_values_name_the_key(name, value, key):
    with pytest.raises(config.ConfigError) as caught:
        config.load(None, environ={name: value})
    assert key in str(caught.value)


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml", environ={})
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[server\nport = 1"), environ={})


@pytest.mark.parametrize("how", ["file", "env"])
def test_serve_refuses_to_start_on_a_bad_key(tmp_path, how):
    data = tmp_path / "data"
    env = subprocess_env(data)
    args = [*MDSYNC, "serve", "--port", "0"]
    if how == "file":
        args += ["--config", str(write(tmp_path, "[server]\nprot = 8080\n"))]
        key = "server.prot"
    else:
        env["MDSYNC_AUTH__REGISTRATION"] = "sometimes"
        key = "auth.registration"
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode != 0
    assert key in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout


# -- the example file documents every key (Datasette-style) --------------------------------------
def _leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_leaf_keys(annotation, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _documented_keys(text: str) -> set[str]:
    """Keys in the example, commented out or not: `key = ...` or `# key = ...` under a [table]."""
    import re

    documented, table = set(), ""
    for line in text.splitlines():
        header = re.match(r"^\s*\[([a-z0-9_.]+)\]\s*(#.*)?$", line)
        if header:
            table = header.group(1) + "."
            continue
        entry = re.match(r"^\s*#?\s*([a-z0-9_]+)\s*=", line)
        if entry:
            documented.add(table + entry.group(1))
    return documented


def test_every_setting_is_in_the_example_file():
    keys = _leaf_keys(config.Settings)
    assert "storage.s3.bucket" in keys and "ai.openai.api_key" in keys  # the walk reaches nested tables
    documented = _documented_keys(EXAMPLE.read_text())
    missing = sorted(set(keys) - documented)
    assert not missing, f"add these to config.example.toml with a one-line explanation: {missing}"
    unknown = sorted(documented - set(keys))
    assert not unknown, f"config.example.toml documents keys that do not exist: {unknown}"


def test_the_example_file_loads_and_shows_the_defaults():
    with open(EXAMPLE, "rb") as fh:
        tomllib.load(fh)  # valid TOML
    from_example = config.load(EXAMPLE, environ={})
    assert from_example == config.load(None, environ={})


# -- the secret --------------------------------------------------------------------------------------
def test_secret_is_generated_once_private_and_reused(tmp_path):
    settings = config.load(None, environ={}, overrides={"server.data_dir": tmp_path / "data"})
    first = config.ensure_secret(settings)
    path = tmp_path / "data" / "secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert config.ensure_secret(settings) == first
    create_app(settings)  # the app reads the same file
    assert path.read_text().strip() == first
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temporary files left behind


def test_an_empty_secret_file_is_replaced(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "secret").write_text("\n")  # what a crash mid-write used to leave
    settings = config.load(None, environ={}, overrides={"server.data_dir": data})
    secret = config.ensure_secret(settings)
    assert len(secret) >= 32
    assert (data / "secret").read_text().strip() == secret


def test_configured_secret_wins_and_writes_no_file(tmp_path):
    settings = config.load(None, environ={"MDSYNC_SERVER__SECRET": "configured-secret-value-0123456789abcdef"},
                           overrides={"server.data_dir": tmp_path / "data"})
    assert config.ensure_secret(settings) == "configured-secret-value-0123456789abcdef"
    assert not (tmp_path / "data" / "secret").exists()


# -- several nodes (cluster.redis_url) ---------------------------------------------------------

def test_a_cluster_needs_postgresql_a_shared_secret_and_s3_and_says_which_is_missing():
    redis = {"MDSYNC_CLUSTER__REDIS_URL": "redis://127.0.0.1:6379/0"}
    with pytest.raises(config.ConfigError, match="database.url is not"):
        config.load(None, environ=redis)
    redis["MDSYNC_DATABASE__URL"] = "postgresql://u@127.0.0.1/db"
    with pytest.raises(config.ConfigError, match="server.secret is not"):
        config.load(None, environ=redis)
    redis["MDSYNC_SERVER__SECRET"] = "s" * 48
    with pytest.raises(config.ConfigError, match='storage.backend is "local"'):
        config.load(None, environ=redis)
    settings = config.load(None, environ={**redis, "MDSYNC_STORAGE__BACKEND": "s3"})
    assert settings.clustered
    assert not config.load(None, environ={"MDSYNC_CLUSTER__REDIS_URL": ""}).clustered


def test_the_group_commit_window_is_wider_on_one_node_than_across_several():
    one = config.load(None, environ={})
    assert one.collab.flush_delay_seconds is None
    assert one.collab.flush_delay(one.clustered) == 0.2
    several = config.load(None, environ={
        "MDSYNC_CLUSTER__REDIS_URL": "redis://127.0.0.1:6379/0", "MDSYNC_DATABASE__URL": "postgresql://u@127.0.0.1/db",
        "MDSYNC_SERVER__SECRET": "s" * 48, "MDSYNC_STORAGE__BACKEND": "s3"})
    assert several.collab.flush_delay(several.clustered) == 0.05  # the floor of cross-node latency
    chosen = config.load(None, environ={"MDSYNC_COLLAB__FLUSH_DELAY_SECONDS": "0.01"})
    assert chosen.collab.flush_delay(False) == chosen.collab.flush_delay(True) == 0.01


def test_a_cluster_redis_url_must_be_a_redis_url():
    with pytest.raises(config.ConfigError, match="cluster.redis_url"):
        config.load(None, environ={"MDSYNC_CLUSTER__REDIS_URL": "http://127.0.0.1:6379"})
