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


# An option whose name contains one of these words is taken for a credential (account_key,
# master_key, service_account_key, client_secret, session_token, sas_token, password, ...) and refused
# in modelforge.toml, and kept out of anything sent elsewhere (Ray task specs).
SECRET_WORDS = ("key", "secret", "token", "password", "credential", "sas")
# The object store settings whose names contain such a word but hold no secret: which KMS key
# encrypts (an id, not key material) and whether S3 bucket keys are enabled.
NON_SECRET_OPTIONS = frozenset({
    "aws_sse_kms_key_id", "sse_kms_key_id", "aws_sse_bucket_key_enabled", "sse_bucket_key_enabled", "bucket_key_enabled",
})


def is_secret_option(name: str) -> bool:
    lowered = name.lower()
    return lowered not in NON_SECRET_OPTIONS and any(word in lowered for word in SECRET_WORDS)


def public_options(options: dict[str, str]) -> dict[str, str]:
    """The options without any that is_secret_option names (to send to another machine)."""
    return {name: value for name, value in options.items() if not is_secret_option(name)}


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
        secret = [key for key in value if is_secret_option(key)]
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
