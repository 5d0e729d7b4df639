"""The project's settings file, `modelforge.toml` at the project root (beside manifests/ and
lock/): today the shared remote cache (where it is, which writers' keys a reader trusts). A strict,
frozen pydantic model, so that a typo is an error naming the key. Imports `errors` and `signing`."""

from __future__ import annotations

import tomllib
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelforge.errors import ConfigError
from modelforge.signing import PublicKey, parse_public_key

CONFIG_FILE = "modelforge.toml"
CACHE_SCHEMES = ("s3", "gs", "az", "abfs", "file")


class ConfigSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_cache_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in CACHE_SCHEMES:
        raise ValueError(
            f"cache URL {url!r}: the scheme must be one of {', '.join(s + '://' for s in CACHE_SCHEMES)} "
            "(e.g. s3://team-bucket/modelforge or file:///mnt/nfs/modelforge-cache)"
        )
    if parsed.scheme == "file" and not parsed.path.startswith("/"):
        raise ValueError(f"cache URL {url!r}: a file:// URL needs an absolute path (file:///mnt/cache)")
    if parsed.scheme != "file" and not parsed.netloc:
        raise ValueError(f"cache URL {url!r} names no bucket or container; write {parsed.scheme}://BUCKET/PREFIX")
    return url


class CacheSpec(ConfigSpec):
    url: str | None = Field(
        default=None,
        description="Where the shared cache lives: s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or "
        "file:///absolute/path (NFS). Overridden by `--cache URL` and by $MODELFORGE_CACHE.",
    )
    trusted_keys: tuple[str, ...] = Field(
        default=(),
        description="Public keys (name:base64, as `modelforge cache keygen` prints them) whose signed step records this "
        "project accepts; a record signed by any other key, or unsigned, is ignored and the step runs locally.",
    )
    read_only: bool = Field(default=False, description="Never push: builds only read the cache (as `--cache-read-only`).")
    options: dict[str, str] = Field(
        default_factory=dict,
        description="Client settings for the object store (obstore's names: endpoint, region, ...); credentials belong in "
        "the environment (AWS_*, GOOGLE_*, AZURE_*), never here.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_cache_url(value)

    @field_validator("trusted_keys")
    @classmethod
    def _keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for text in value:
            parse_public_key(text)
        return value

    @field_validator("options")
    @classmethod
    def _no_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        secret = [key for key in value if any(word in key.lower() for word in ("secret", "token", "password", "access_key", "sas"))]
        if secret:
            raise ValueError(f"{', '.join(sorted(secret))}: credentials do not belong in a committed file; set them in the environment")
        return value

    def public_keys(self) -> tuple[PublicKey, ...]:
        return tuple(parse_public_key(text) for text in self.trusted_keys)


class ProjectConfig(ConfigSpec):
    cache: CacheSpec = Field(default_factory=CacheSpec, description="The shared remote cache.")


def load_project_config(root: Path) -> ProjectConfig:
    """`modelforge.toml` under root, or the defaults (no remote cache) when there is none."""
    path = Path(root) / CONFIG_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ProjectConfig()
    except OSError as error:
        raise ConfigError(f"cannot read {path} ({error.strerror}); check its permissions") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}; fix the TOML syntax") from None
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{path}: {where}: {message}; fix it (see docs/team-cache.md)") from None
