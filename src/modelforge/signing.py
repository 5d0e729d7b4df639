"""Ed25519 keys for the remote cache: a writer signs each step record it pushes, a reader accepts
a record only when a key its project trusts signed it (Nix's `trusted-public-keys`, not Bazel's
unsigned action cache). Key texts are `name:base64`, as Nix writes them. Imports only `errors`;
cryptography is imported inside the functions, so commands that sign nothing never load it."""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from pathlib import Path

from modelforge.errors import ConfigError

KEY_TEXT = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,63}):(?P<key>[A-Za-z0-9+/]{43}=)$")
# What a signature covers starts with this, so that a signature over a record can never be
# replayed as a signature over anything else this key signs.
SIGNED_PREFIX = b"modelforge-step-record/1\n"


def _ed25519():
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ConfigError("signing cache records needs cryptography; run `pip install 'modelforge[remote]'`") from None
    return ed25519


@dataclass(frozen=True)
class PublicKey:
    name: str
    raw: bytes  # 32 bytes

    @property
    def text(self) -> str:
        return f"{self.name}:{base64.b64encode(self.raw).decode()}"


@dataclass(frozen=True)
class SigningKey:
    name: str
    seed: bytes  # 32 bytes: the private key

    def public(self) -> PublicKey:
        ed25519 = _ed25519()
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        raw = ed25519.Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return PublicKey(self.name, raw)

    def sign(self, message: bytes) -> str:
        return base64.b64encode(_ed25519().Ed25519PrivateKey.from_private_bytes(self.seed).sign(SIGNED_PREFIX + message)).decode()


def parse_public_key(text: str) -> PublicKey:
    """`name:base64` of a 32-byte ed25519 public key; ValueError (for pydantic) otherwise."""
    match = KEY_TEXT.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a public key of the form name:base64 (as `modelforge cache keygen` prints it)")
    return PublicKey(match["name"], base64.b64decode(match["key"]))


def verify(public: PublicKey, message: bytes, signature: str) -> bool:
    ed25519 = _ed25519()
    from cryptography.exceptions import InvalidSignature

    try:
        raw = base64.b64decode(signature, validate=True)
        ed25519.Ed25519PublicKey.from_public_bytes(public.raw).verify(raw, SIGNED_PREFIX + message)
        return True
    except (InvalidSignature, binascii.Error, ValueError):
        return False


def default_key_path() -> Path:
    """$MODELFORGE_SIGNING_KEY, else the user's config directory: never a path inside a project."""
    if os.environ.get("MODELFORGE_SIGNING_KEY"):
        return Path(os.environ["MODELFORGE_SIGNING_KEY"])
    from platformdirs import user_config_path

    return user_config_path("modelforge") / "cache-signing.key"


def _inside_git_work_tree(path: Path) -> Path | None:
    for directory in [path.parent, *path.parent.parents]:
        if (directory / ".git").exists():
            return directory
    return None


def generate(name: str, path: Path) -> PublicKey:
    """Write a new private key to path (0600, refused inside a git work tree, never overwritten)
    and return its public key."""
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", name):
        raise ConfigError(f"key name {name!r}: use letters, digits, '.', '_' or '-' (e.g. ci-1 or alice-laptop)")
    path = Path(path).expanduser().absolute()
    repository = _inside_git_work_tree(path)
    if repository is not None:
        raise ConfigError(
            f"{path} is inside the git work tree {repository}; a private key must never be committed: "
            f"write it outside (the default is {default_key_path()}) or pass --out elsewhere"
        )
    seed = os.urandom(32)
    key = SigningKey(name, seed)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; remove it first or pass --out with another path") from None
    with os.fdopen(descriptor, "w") as out:
        out.write(f"{name}:{base64.b64encode(seed).decode()}\n")
    return key.public()


def load_signing_key(path: Path) -> SigningKey | None:
    """The private key at path, or None when there is none; a damaged or world-readable key is an error."""
    try:
        text = Path(path).read_text().strip()
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ConfigError(f"cannot read the signing key {path} ({error.strerror}); check its permissions") from None
    if mode & 0o077:
        raise ConfigError(f"the signing key {path} is readable by others (mode {mode & 0o777:o}); run `chmod 600 {path}`")
    match = KEY_TEXT.match(text)
    if match is None:
        raise ConfigError(f"{path} is not a modelforge signing key (name:base64); make a new one with `modelforge cache keygen NAME`")
    return SigningKey(match["name"], base64.b64decode(match["key"]))
