"""The shared remote cache: step records and objects in an object store addressed by URL (s3://,
gs://, az://, file:// for NFS), laid out as the local store is: objects/<sha[:2]>/<sha> and
steps/<key[:2]>/<key>.json.

Pushing a step: its objects first, content-addressed (a small one is a create-if-absent PUT; a large
one a multipart upload streamed from disk, which the store makes visible only when complete), then
its record, signed by the writer's ed25519 key, created only if absent. So a reader never sees a
record before its objects, a pusher killed at any moment leaves nothing a reader accepts half of,
and two pushers of one key race harmlessly (the second finds the first's record).
Pulling a step: its record (its size asked first: over MAX_RECORD_BYTES it is refused unread),
accepted only when a key the project trusts signed it, then each object the local store lacks,
streamed into the store's scratch, re-hashed, and adopted only when it hashes to its name. Objects
are trusted by their hash alone (a pusher re-hashes one already there, and replaces it when wrong);
records by their signature alone. Whatever the bucket holds, reading it is a value or a one-line
warning, never an exception; every error is one line, credentials and signed URLs redacted.
A machine signs only the records it built (a pulled record keeps its signer's signature, and its
signer's revocation).

A remote record is JSON: {"format": "modelforge-step-record/1", "record": {key, kind, outputs:
{name: {sha256, size}}, inputs (optional): {"<input>/<file>": sha256}}, "signature": {"key": "name:base64 public key", "value": base64 ed25519
signature of the prefix "modelforge-step-record/1\n" and the record's canonical JSON}}.

The client is obstore (Apache Arrow's Rust object_store): one API with the same guarantees on S3,
GCS, Azure and a local filesystem: atomic puts, conditional create and update, streamed multipart.
Imports store, hashing, signing, errors; obstore is imported on first use."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

from modelforge.errors import ConfigError, RemoteError
from modelforge.faults import fault_point
from modelforge.project_config import check_cache_url
from modelforge.signing import PublicKey, SigningKey, parse_public_key, verify
from modelforge.store import BUILT_HERE, FileRecord, StepRecord, Store, describe_writer, parse_record, pulled_by, record_fields, storage_error

RECORD_FORMAT = "modelforge-step-record/1"
# Objects of this size or more go up as a multipart upload streamed from disk (a conditional put is
# single-part and would hold the whole object in memory); parts of this size.
PART_SIZE = 8 << 20
READ_CHUNK = 1 << 20
# A record names a step's outputs (a few hundred bytes per file): anything larger was planted, and is
# refused by its size (a `head`) before a byte of it is read, so a multi-GB "record" costs nothing.
MAX_RECORD_BYTES = 1 << 20


def object_path(sha256: str) -> str:
    return f"objects/{sha256[:2]}/{sha256}"


def record_path(key: str) -> str:
    return f"steps/{key[:2]}/{key}.json"


def canonical(record: StepRecord) -> bytes:
    """What a signature covers: the record's fields as canonical JSON."""
    return json.dumps(record_fields(record), sort_keys=True, separators=(",", ":")).encode()


def encode_record(record: StepRecord, signing_key: SigningKey) -> bytes:
    document = {
        "format": RECORD_FORMAT,
        "record": record_fields(record),
        "signature": {"key": signing_key.public().text, "value": signing_key.sign(canonical(record))},
    }
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()


class RecordTooLarge(Exception):
    """A remote record over MAX_RECORD_BYTES; its message is the Lookup's problem."""

    def __init__(self, size: int, grew: bool = False):
        said = f"grew past {size} bytes while read" if grew else f"is {size} bytes"
        super().__init__(f"{said}, more than the {MAX_RECORD_BYTES} a record may be (planted or damaged); not read")


@dataclass(frozen=True)
class Lookup:
    """A remote record read back: record when accepted; problem (why not, in words) when one is
    there but cannot be trusted; both None when there is none."""

    record: StepRecord | None = None
    problem: str | None = None
    signer: str | None = None


def decode_record(data: bytes, key: str, trusted: tuple[PublicKey, ...]) -> Lookup:
    """Anything in data (it comes from whoever can write to the bucket) is a Lookup, never an
    exception: deep nesting (RecursionError), bad UTF-8, fields of any type."""
    try:
        return _decode_record(data, key, trusted)
    except (ValueError, TypeError, RecursionError, MemoryError, AttributeError, KeyError) as error:
        return Lookup(problem=f"cannot be parsed ({type(error).__name__}; damaged or planted)")


def _parse_json(data: bytes) -> Any:
    """JSON from the bucket; ValueError for anything that is not plain, shallow JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nests too deep") from None


def _decode_record(data: bytes, key: str, trusted: tuple[PublicKey, ...]) -> Lookup:
    try:
        document = _parse_json(data)
    except ValueError:
        return Lookup(problem="is not JSON (damaged)")
    if not isinstance(document, dict) or document.get("format") != RECORD_FORMAT or not set(document) <= {"format", "record", "signature"}:
        return Lookup(problem=f"is not a {RECORD_FORMAT} record (damaged or from another tool)")
    record = parse_record(document.get("record"), key)
    if record is None or not {"key", "kind", "outputs"} <= set(document["record"]) <= {"key", "kind", "outputs", "inputs"}:
        return Lookup(problem="is malformed or names another key (damaged or swapped)")
    signature = document.get("signature")
    if not isinstance(signature, dict) or not isinstance(signature.get("key"), str) or not isinstance(signature.get("value"), str):
        return Lookup(problem="is unsigned")
    try:
        signer = parse_public_key(signature["key"])
    except ValueError:
        return Lookup(problem="is signed with a malformed key")
    if signer not in trusted:
        return Lookup(problem=f"is signed by {signer.name!r}, a key modelforge.toml's cache.trusted_keys does not list", signer=signer.name)
    if not verify(signer, canonical(record), signature["value"]):
        return Lookup(problem=f"claims {signer.name!r}'s signature, which does not verify (forged or altered)", signer=signer.name)
    return Lookup(record=dataclasses.replace(record, writer=pulled_by(signer.text)), signer=signer.name)


@dataclass
class RemoteCache:
    url: str
    trusted: tuple[PublicKey, ...] = ()
    signing_key: SigningKey | None = None
    read_only: bool = False
    options: dict[str, str] = field(default_factory=dict)
    # Objects found damaged while pulling: a push replaces them instead of trusting their presence.
    damaged: set[str] = field(default_factory=set)
    # Objects this process uploaded or re-hashed in the remote: not checked again.
    verified: set[str] = field(default_factory=set)
    # Set (to the one-line why) when the bucket or container turned out not to exist: said once,
    # then nothing more is pushed this run.
    unusable: str | None = None
    _client: Any = None

    @property
    def location(self) -> str:
        """The URL as messages show it (a query string or user info in it redacted)."""
        return redact(self.url)

    @property
    def can_push(self) -> bool:
        return not self.read_only and self.signing_key is not None and self.unusable is None

    # ------------------------------------------------------------------ the client
    @property
    def client(self):
        if self._client is None:
            parsed = urlparse(self.url)
            try:
                if parsed.scheme == "file":
                    from obstore.store import LocalStore

                    self._client = LocalStore(parsed.path, mkdir=True)
                else:
                    from obstore.store import from_url

                    self._client = from_url(self.url, config=dict(self.options) or None)
            except ImportError:
                raise ConfigError(f"cache {self.location}: the remote cache needs obstore; run `pip install 'modelforge[remote]'`") from None
            except Exception as error:  # obstore's configuration errors, a file:// path it cannot create
                raise ConfigError(f"cache {self.location}: {_short(error)}; check the URL and cache.options in modelforge.toml") from None
        return self._client

    def _call(self, what: str, function: Callable, *args, **kwargs):
        """One request; NotFound stays FileNotFoundError, obstore's AlreadyExists and Precondition
        pass through for the caller to decide; anything else is a RemoteError that says what to do."""
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            return function(self.client, *args, **kwargs)
        except FileNotFoundError as error:
            if _missing_container(error):
                code = _XML_CODE.search(str(error))
                self.unusable = (
                    f"cache {self.location}: {what} failed: the bucket or container does not exist"
                    f"{f' ({code[1]})' if code else ''}; create it, or fix the cache URL (or build without it: --cache '')"
                )
                raise RemoteError(self.unusable) from None
            raise
        except (AlreadyExistsError, PreconditionError, RecordTooLarge):
            raise
        except ConfigError:
            raise
        except Exception as error:
            raise RemoteError(
                f"cache {self.location}: {what} failed ({_short(error)}); check the network, the credentials in the environment "
                "and the URL (or build without it: --cache '')"
            ) from None

    # ------------------------------------------------------------------ reading
    def lookup(self, key: str) -> Lookup:
        try:
            data = self._read_record(key)
        except FileNotFoundError:
            return Lookup()
        except RecordTooLarge as error:
            return Lookup(problem=str(error))
        return decode_record(data, key, self.trusted)

    def _read_record(self, key: str) -> bytes:
        """A record's bytes: its size asked first (a `head`), and never more than MAX_RECORD_BYTES
        read, even if it grew between the two requests. FileNotFoundError when there is none."""
        import obstore

        path = record_path(key)
        meta = self._call(f"reading record {key[:12]}…", obstore.head, path)
        if meta["size"] > MAX_RECORD_BYTES:
            raise RecordTooLarge(meta["size"])

        def read(client) -> bytes:
            data = bytearray()
            for chunk in obstore.get(client, path).stream(min_chunk_size=64 << 10):
                data += chunk
                if len(data) > MAX_RECORD_BYTES:
                    raise RecordTooLarge(len(data), grew=True)
            return bytes(data)

        return self._call(f"reading record {key[:12]}…", read)

    def fetch(self, key: str, store: Store, warn: Callable[[str], None]) -> StepRecord | None:
        """The step's record and objects into the local store, or None (a miss, or something not
        to be trusted: then warn says why in one line and the step runs locally)."""
        found = self.lookup(key)
        if found.problem is not None:
            warn(f"the remote record {key[:12]}… in {self.location} {found.problem}; ignored, the step runs locally")
            return None
        if found.record is None:
            return None
        for name, item in sorted(found.record.outputs.items()):
            if store.has_object(item):
                continue
            problem = self.download(item, store)
            if problem is not None:
                warn(f"the remote object {item.sha256[:12]}… ({name}) in {self.location} {problem}; ignored, the step runs locally")
                return None
        fault_point("remote/pulled")
        store.put_record(found.record)
        return found.record

    def download(self, item: FileRecord, store: Store) -> str | None:
        """One object into the local store, re-hashed on arrival; None when it is there, else why
        not (missing, or not hashing to its name)."""
        import obstore

        with store.scratch("pull") as scratch:
            file = scratch / item.sha256
            digest, size = hashlib.sha256(), 0
            try:
                with open(file, "wb") as out:
                    for chunk in self._stream(f"downloading {item.sha256[:12]}…", object_path(item.sha256)):
                        size += len(chunk)
                        if size > item.size:
                            break
                        digest.update(chunk)
                        out.write(chunk)
                    out.flush()
            except FileNotFoundError:
                return "is missing"
            except OSError as error:
                raise storage_error(error, f"pulling {item.sha256[:12]}…") from None
            if size != item.size or digest.hexdigest() != item.sha256:
                self.damaged.add(item.sha256)
                self.verified.discard(item.sha256)
                return "does not hash to its name (damaged or tampered)"
            store.adopt(file, item.sha256)
        self.verified.add(item.sha256)
        return None

    # ------------------------------------------------------------------ writing
    def push(self, record: StepRecord, store: Store) -> bool:
        """Objects, then the signed record if absent. True if this call wrote the record, False if a
        trusted one was there already. Every object must be in the local store and intact, and the
        record built here: this machine never signs what another one wrote."""
        _built_here(record, self.url)
        if self.read_only:
            raise RemoteError(f"cache {self.url} is read-only here (--cache-read-only or cache.read_only); push from a trusted machine")
        if self.signing_key is None:
            raise RemoteError(f"no signing key to push to {self.url}; run `modelforge cache keygen NAME` and list its public key in modelforge.toml")
        for name, item in sorted(record.outputs.items()):
            if not store.has_object(item):
                raise RemoteError(f"{name} of step {record.key[:12]}… is missing or damaged in the local store; rebuild it before pushing")
            fault_point("remote/object")
            self.put_file(store.object_path(item.sha256), item)
        return self.put_record(record)

    def put_record(self, record: StepRecord) -> bool:
        """The signed record, created only if absent (its objects must be in the remote already:
        push() puts them first; a Ray worker pushed them for the driver that signs). True if this
        call wrote it, False if a trusted one was there already. Only a record built here (by this
        machine, or by a Ray cluster this driver runs) is signed."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        if self.read_only or self.signing_key is None:
            raise RemoteError(f"cannot write records to {self.url}: it is read-only here, or there is no signing key")
        _built_here(record, self.url)
        fault_point("remote/record")
        data = encode_record(record, self.signing_key)
        path = record_path(record.key)
        try:
            self._call(f"writing record {record.key[:12]}…", obstore.put, path, data, mode="create")
            return True
        except AlreadyExistsError:
            pass
        existing = self.lookup(record.key)
        if existing.record is not None or existing.problem is None:
            return False
        # An unsigned, forged or untrusted record squats on the key: replace it, only if nobody
        # changed it since it was read (a conditional update on its version).
        # Where the store has no conditional update (a local filesystem), a plain atomic overwrite:
        # two honest pushers racing there each leave a whole, valid record.
        from obstore.exceptions import NotSupportedError

        try:
            meta = self._call(f"reading record {record.key[:12]}…", obstore.head, path)
            version = {name: meta[name] for name in ("e_tag", "version") if meta.get(name)}
            try:
                obstore.put(self.client, path, data, mode=version)
            except (NotSupportedError, NotImplementedError):
                self._call(f"replacing record {record.key[:12]}…", obstore.put, path, data, mode="overwrite")
            except (FileNotFoundError, PreconditionError, AlreadyExistsError):
                raise
            except Exception as error:
                raise RemoteError(f"cache {self.url}: replacing record {record.key[:12]}… failed ({_short(error)}); check the network and the credentials") from None
            return True
        except (FileNotFoundError, PreconditionError, AlreadyExistsError):
            return False  # someone else replaced it first

    def put_file(self, source: Path, item: FileRecord) -> None:
        """Upload the file at source as the object item names, unless it is there already. The
        caller vouches that source hashes to item.sha256 (a store object, or a source file it just
        re-hashed); every reader re-hashes it anyway.

        Presence is decided by hash, not by size: builds are reproducible, so anyone who may write
        to the bucket can predict an object's name and plant other bytes under it before the honest
        push. An object already there is therefore streamed back and re-hashed (a download, no disk,
        no memory; cheaper than uploading again, and no new version in a versioned bucket), and
        replaced when it is not what its name says. Each object is checked once per process."""
        import obstore
        from obstore.exceptions import AlreadyExistsError

        path = object_path(item.sha256)
        if item.sha256 in self.verified:
            return
        mode = "create"
        if item.sha256 in self.damaged:
            mode = "overwrite"
        else:
            try:
                meta = self._call(f"checking {item.sha256[:12]}…", obstore.head, path)
                if meta["size"] == item.size and self.rehash(path)[0] == item.sha256:
                    self.verified.add(item.sha256)
                    return  # content-addressed, and the content is what its name says
                mode = "overwrite"  # planted or damaged bytes under the name: replace them
            except FileNotFoundError:
                pass
        if item.size < PART_SIZE:
            try:
                self._call(f"uploading {item.sha256[:12]}…", obstore.put, path, source.read_bytes(), mode=mode)
            except AlreadyExistsError:
                pass  # a concurrent pusher of the same content won (and every reader re-hashes it)
        else:
            # Multipart: the parts stay invisible until the upload completes; an interrupted one
            # leaves nothing at the path (S3 keeps its parts until a lifecycle rule aborts them).
            self._call(f"uploading {item.sha256[:12]}…", obstore.put, path, _chunks(source), chunk_size=PART_SIZE, max_concurrency=4)
        self.damaged.discard(item.sha256)
        self.verified.add(item.sha256)

    # ------------------------------------------------------------------ listing, checking, collecting
    def entries(self, prefix: str) -> Iterator[dict]:
        """Every object's metadata under prefix ('steps/' or 'objects/'): path, size, last_modified."""
        import obstore

        stream = self._call(f"listing {prefix}", obstore.list, prefix=prefix)
        try:
            for batch in stream:
                yield from batch
        except Exception as error:
            raise RemoteError(f"cache {self.location}: listing {prefix} failed ({_short(error)}); check the network and the credentials") from None

    def records(self) -> Iterator[tuple[str, dict]]:
        for meta in self.entries("steps/"):
            name = meta["path"].rsplit("/", 1)[-1]
            if name.endswith(".json"):
                yield name.removesuffix(".json"), meta

    def read_unverified(self, key: str) -> StepRecord | None:
        """A record's fields whatever its signature (for gc: what it references)."""
        try:
            document = _parse_json(self._read_record(key))
            return parse_record(document.get("record") if isinstance(document, dict) else None, key)
        except (FileNotFoundError, RecordTooLarge, ValueError, TypeError, AttributeError, KeyError):
            return None

    def rehash(self, path: str) -> tuple[str, int]:
        """(sha256, size) of a remote object, streamed: no disk, flat memory."""
        digest, size = hashlib.sha256(), 0
        for chunk in self._stream(f"downloading {path}", path):
            digest.update(chunk)
            size += len(chunk)
        return digest.hexdigest(), size

    def check_object(self, item: FileRecord) -> str | None:
        """None when the remote object item names is there and hashes to its name, else why not."""
        try:
            sha, size = self.rehash(object_path(item.sha256))
        except FileNotFoundError:
            return "is missing"
        if (sha, size) != (item.sha256, item.size):
            self.damaged.add(item.sha256)
            self.verified.discard(item.sha256)
            return f"does not hash to its name (its bytes hash to {sha[:12]}…, {size} bytes: damaged or tampered)"
        self.verified.add(item.sha256)
        return None

    def _stream(self, what: str, path: str) -> Iterator[bytes]:
        """The chunks of a remote object; a failure mid-stream is a RemoteError like any other."""
        import obstore

        result = self._call(what, obstore.get, path)
        chunks = iter(result.stream(min_chunk_size=READ_CHUNK))
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            except FileNotFoundError:
                raise
            except Exception as error:
                raise RemoteError(f"cache {self.location}: {what} failed ({_short(error)}); check the network and the credentials") from None
            yield chunk

    def sweep_partial_uploads(self, older_than: float, dry_run: bool = False) -> tuple[int, int]:
        """file:// only: a multipart upload killed mid-way leaves its staging file (`<sha>#<n>`)
        beside where the object would be; listings never show it, so remove those older than
        older_than seconds here. (S3, GCS and Azure keep such parts invisible until a lifecycle
        rule aborts them.) Returns (files, bytes)."""
        parsed = urlparse(self.url)
        if parsed.scheme != "file":
            return 0, 0
        import time

        count = size = 0
        for path in (Path(parsed.path) / "objects").glob("*/*#*"):
            try:
                status = path.stat()
                if time.time() - status.st_mtime < older_than:
                    continue
                if not dry_run:
                    path.unlink()
            except FileNotFoundError:
                continue
            count, size = count + 1, size + status.st_size
        return count, size

    def delete(self, path: str) -> None:
        import obstore

        try:
            self._call(f"deleting {path}", obstore.delete, path)
        except FileNotFoundError:
            pass


def _built_here(record: StepRecord, url: str) -> None:
    if record.writer != BUILT_HERE:
        raise RemoteError(
            f"step record {record.key[:12]}… ({record.kind}) was not built on this machine ({describe_writer(record.writer)}); "
            f"only its builder signs it for {url}: rebuild it here to push it"
        )


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            yield chunk
            fault_point("remote/part")


# Credentials and signed-URL parts that an object store client may echo in an error (a presigned
# URL's query string, an Authorization header, a Debug dump of its configuration).
_URL_QUERY = re.compile(r"([a-z][a-z0-9+.-]*://[^\s\"'<>?]*)\?[^\s\"'<>]*", re.IGNORECASE)
_URL_USER = re.compile(r"([a-z][a-z0-9+.-]*://)[^\s/@\"'<>]+@", re.IGNORECASE)
_SECRET_PAIR = re.compile(
    r"(?i)\b([a-z0-9_-]*(?:key|secret|token|password|credential|signature|sig|authorization)[a-z0-9_-]*)"
    r"(\"?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s,&;}\]]+(?:\s+Credential=[^\s,]+)?)"
)
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{16}\b")
_XML_CODE = re.compile(r"<Code>([^<]{1,64})</Code>")
# A missing bucket or container, as S3, GCS and Azure name it in a 404's body.
_NO_CONTAINER = ("NoSuchBucket", "ContainerNotFound", "The specified bucket does not exist", "The specified container does not exist")


def redact(text: str) -> str:
    """text with signed-URL query strings, URL user info, credential-like `name=value` pairs and
    AWS access key ids replaced by `…`."""
    text = _URL_QUERY.sub(r"\1?…", text)
    text = _URL_USER.sub(r"\1…@", text)
    text = _SECRET_PAIR.sub(lambda match: f"{match[1]}{match[2]}…", text)
    return _ACCESS_KEY_ID.sub("…", text)


def _short(error: BaseException) -> str:
    """One line: the client's message without its Debug dump or XML body (the error code kept),
    redacted, at most 240 characters."""
    text = str(error).split("Debug source:")[0]
    code = _XML_CODE.search(str(error))
    text = re.sub(r"<\?xml.*", "", text, flags=re.DOTALL)
    text = " ".join(redact(text).split()).rstrip(" :")[:240]
    return f"{type(error).__name__}: {text}" + (f" ({code[1]})" if code else "")


def _missing_container(error: BaseException) -> bool:
    return any(marker in str(error) for marker in _NO_CONTAINER)


def open_remote(url: str, *, trusted: tuple[PublicKey, ...], signing_key: SigningKey | None, read_only: bool, options: dict[str, str] | None = None) -> RemoteCache:
    try:
        check_cache_url(url)
    except ValueError as error:
        raise ConfigError(f"{error}; fix --cache, $MODELFORGE_CACHE or cache.url in modelforge.toml") from None
    return RemoteCache(url, trusted, signing_key, read_only, dict(options or {}))

