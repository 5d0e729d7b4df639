"""Owns every access to the Hugging Face Hub and its local cache (resolve, list, download, safetensors
headers), through huggingface_hub only; reads HF_ENDPOINT, HF_HUB_OFFLINE, HF_TOKEN and HF_HOME at call time.
Imports only `errors` and `hashing` of modelforge, and must never import torch or transformers."""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import importlib
import json
import logging
import os
import re
import struct
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from huggingface_hub import HfApi, RepoFile, constants, hf_hub_download
from huggingface_hub import errors as hf_errors
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import tqdm as hf_tqdm
from huggingface_hub.utils import validate_repo_id

from modelforge import __version__
from modelforge.errors import HubError, HubUnavailableError
from modelforge.hashing import CHUNK, hash_file

if TYPE_CHECKING:
    from modelforge.hashing import HashCache

__all__ = [
    "HubError",
    "RemoteFile",
    "cache_dir_default",
    "download",
    "endpoint",
    "is_offline",
    "list_files",
    "resolve_commit",
    "safetensors_headers",
]

logger = logging.getLogger(__name__)

_COMMIT = re.compile(r"[0-9a-fA-F]{40}")
_TRUE = {"1", "ON", "YES", "TRUE"}
_TOKEN_SHAPE = re.compile(r"\bhf_[A-Za-z0-9]{8,}")
_MAX_HEADER = 100 << 20
_LISTED_MISSING = 8  # files named in an error message before "and N more"
_API_TIMEOUT = 60.0  # seconds without a byte before an API call gives up (huggingface_hub's default: never)
_HINT_TIMEOUT = 5.0  # for the best-effort lookup that only improves an error message


@dataclass(frozen=True)
class RemoteFile:
    path: str  # POSIX path inside the repo
    size: int
    sha256: str | None  # LFS sha256 where the Hub reports it (None for small git files)
    blob_id: str | None  # git blob id (for non-LFS files)


# ---------------------------------------------------------------------- environment, read at call time
def endpoint() -> str:
    """HF_ENDPOINT as set now (huggingface_hub reads it once, at import, so we pass it explicitly)."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now; also true when it was set when huggingface_hub was
    imported, since huggingface_hub then refuses every request whatever the environment says later."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def cache_dir_default() -> Path:
    """The Hugging Face hub cache as the environment says now: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE,
    HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub (huggingface_hub's order)."""

    def expand(value: str) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(value)))

    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return expand(os.environ[name])
    if os.environ.get("HF_HOME"):
        return expand(os.environ["HF_HOME"]) / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return expand(base) / "huggingface" / "hub"


def _api() -> HfApi:
    # token=None: huggingface_hub sends HF_TOKEN (read at call time) or the stored login token.
    return HfApi(endpoint=endpoint(), library_name="modelforge", library_version=__version__)


def repo_cache_dir(repo: str) -> Path:
    """The repository's folder in the Hugging Face cache (its snapshots link into its blobs/)."""
    return cache_dir_default() / repo_folder_name(repo_id=repo, repo_type="model")


def _snapshot_dir(cache: Path, repo: str, commit: str) -> Path:
    return cache / repo_folder_name(repo_id=repo, repo_type="model") / "snapshots" / commit


# ---------------------------------------------------------------------- errors
def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures of whichever HTTP client huggingface_hub uses (httpx2 in 2.x, httpx in 1.x)."""
    found: list[type[BaseException]] = []
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


_TRANSPORT_ERRORS = _transport_errors()


def _secrets() -> list[str]:
    values = [os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        values.append(Path(constants.HF_TOKEN_PATH).read_text())
    except (OSError, ValueError):
        pass
    return [value.strip() for value in values if value and len(value.strip()) >= 4]


def _redact(text: str) -> str:
    """One line, without any token we know of or anything shaped like a Hub token."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    text = _TOKEN_SHAPE.sub("hf_***", text)
    return " ".join(text.split())


def _fail(message: str) -> HubError:
    return HubError(_redact(message))


def _unavailable(message: str) -> HubUnavailableError:
    """The Hub is out of reach (network or offline mode) and the cache cannot stand in for it."""
    return HubUnavailableError(_redact(message))


def _translate(error: BaseException, what: str) -> HubError | None:
    """A HubError for a failure of huggingface_hub or the network, or None for anything else (a bug)."""
    where = endpoint()
    if isinstance(error, hf_errors.GatedRepoError):
        return _fail(f"{what}: the repository is gated; accept its terms on the Hub and set HF_TOKEN to a token of that account")
    if isinstance(error, hf_errors.RepositoryNotFoundError):
        return _fail(
            f"{what}: repository not found on {where} (or it is private and no valid token was sent); "
            "check the repo id, or set HF_TOKEN to a token that can read it"
        )
    if isinstance(error, hf_errors.RevisionNotFoundError):
        return _fail(f"{what}: revision not found in the repository; check `revision` (a 40-hex commit of this repo)")
    if isinstance(error, hf_errors.RemoteEntryNotFoundError):
        return _fail(f"{what}: file not found at this commit; check the file patterns against the repo's files")
    if isinstance(error, hf_errors.DisabledRepoError):
        return _fail(f"{what}: the repository is disabled on the Hub; use another source")
    if isinstance(error, hf_errors.HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status == 401:
            return _fail(f"{what}: the Hub rejected the credentials (HTTP 401); check HF_TOKEN or run `hf auth login`")
        if status == 403:
            return _fail(f"{what}: access denied (HTTP 403); check that the token in HF_TOKEN may read this repository")
        if status == 429:
            return _fail(f"{what}: rate limited by the Hub (HTTP 429); wait a few minutes and run again, or set HF_TOKEN")
        return _fail(f"{what}: the Hub at {where} answered HTTP {status}; run again later, or check HF_ENDPOINT")
    if isinstance(error, hf_errors.OfflineModeIsEnabled):
        return _unavailable(f"{what}: offline mode is on (HF_HUB_OFFLINE) and this needs the Hub; unset HF_HUB_OFFLINE")
    if isinstance(error, hf_errors.LocalEntryNotFoundError):
        return _unavailable(f"{what}: not in the Hugging Face cache and the Hub at {where} cannot be reached; check the network and HF_ENDPOINT")
    if isinstance(error, hf_errors.HFValidationError):
        return _fail(f"{what}: not a valid Hub repo id or revision; use 'owner/name' and a 40-hex commit")
    if isinstance(error, (hf_errors.SafetensorsParsingError, hf_errors.NotASafetensorsRepoError)):
        return _fail(f"{what}: the Hub's file is not a readable safetensors file; check the source repository")
    if _TRANSPORT_ERRORS and isinstance(error, _TRANSPORT_ERRORS):
        return _unavailable(
            f"{what}: cannot reach the Hub at {where} ({type(error).__name__}); check the network and HF_ENDPOINT, "
            "or set HF_HUB_OFFLINE=1 to use only the Hugging Face cache"
        )
    if isinstance(error, OSError):
        if error.errno == errno.ENOSPC:
            return _fail(f"{what}: no space left on the device holding the Hugging Face cache; free space or set HF_HOME elsewhere")
        lines = str(error).splitlines()
        reason = error.strerror or (lines[0] if lines else type(error).__name__)
        return _fail(f"{what}: download failed ({reason}); run again (a partial download is not kept)")
    return None


@contextmanager
def _hub_errors(what: str) -> Iterator[None]:
    try:
        yield
    except HubError:
        raise
    except Exception as error:
        translated = _translate(error, what)
        if translated is None:
            raise
        # `from None`: the library's exception (and the request it carries, headers included) is not chained.
        raise translated from None


def _check_repo(repo: str) -> None:
    try:
        validate_repo_id(repo)
    except hf_errors.HFValidationError:
        raise _fail(f"{repo!r} is not a valid Hub repo id; write it as 'owner/name'") from None
    if "/" not in repo:
        raise _fail(f"{repo!r} is not a full Hub repo id; write it as 'owner/name'")


def _check_commit(repo: str, commit: str) -> str:
    if not _COMMIT.fullmatch(commit or ""):
        raise _fail(f"{repo}: {commit!r} is not a 40-hex commit; pass the commit resolve_commit returned")
    return commit.lower()


# ---------------------------------------------------------------------- the cached file list of a commit
# huggingface_hub 2.4.0 keeps the file list of a commit (immutable, so cached forever) at
# <cache>/models--owner--name/trees/<commit>.json, in the format its _tree_cache module documents and
# snapshot_download writes. list_files reads and writes the same file, so a commit listed once is listed
# again without a request, and offline; the format is handled here rather than through that private module.
_TREE_FORMAT = 1


def _tree_path(cache: Path, repo: str, commit: str) -> Path:
    return cache / repo_folder_name(repo_id=repo, repo_type="model") / "trees" / f"{commit}.json"


def _in_cache(cache: Path, repo: str, commit: str) -> bool:
    """Whether the Hub once served this commit of this repo into the cache (a snapshot or a file list)."""
    return _snapshot_dir(cache, repo, commit).is_dir() or _tree_path(cache, repo, commit).is_file()


def _read_listing(cache: Path, repo: str, commit: str) -> list[RemoteFile] | None:
    path = _tree_path(cache, repo, commit)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.warning("ignoring unreadable cached file list %s (%s)", path, type(error).__name__)
        return None
    try:
        if data.get("format_version") != _TREE_FORMAT:
            return None
        files = []
        for name, info in data["files"].items():
            sha256 = info.get("lfs_sha256")
            files.append(
                RemoteFile(
                    path=name,
                    size=int(info["lfs_size"] if sha256 is not None and info.get("lfs_size") is not None else info["size"]),
                    sha256=sha256.lower() if sha256 else None,
                    blob_id=None if sha256 else info["blob_id"],
                )
            )
        return files
    except (AttributeError, KeyError, TypeError, ValueError):
        logger.warning("ignoring malformed cached file list %s", path)
        return None


def _write_listing(cache: Path, repo: str, commit: str, entries: Sequence[Any]) -> None:
    """Best effort: a cache that cannot be written only costs a request next time."""
    path = _tree_path(cache, repo, commit)
    files = {}
    for entry in sorted(entries, key=lambda e: e.path):
        info: dict[str, Any] = {"size": entry.size, "blob_id": entry.blob_id}
        if entry.lfs is not None:
            info["lfs_sha256"] = entry.lfs.sha256
            info["lfs_size"] = entry.lfs.size
        if getattr(entry, "xet_hash", None) is not None:
            info["xet_hash"] = entry.xet_hash
        files[entry.path] = info
    payload = json.dumps({"format_version": _TREE_FORMAT, "files": files}, indent=1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A repo folder without snapshots/ reads as corrupted to `hf cache scan`.
        (path.parent.parent / "snapshots").mkdir(exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(payload)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        logger.warning("could not cache the file list of %s@%s (%s)", repo, commit, error.strerror)


def _offline_missing(what: str, cache: Path) -> HubError:
    return _unavailable(
        f"{what}: not in the Hugging Face cache ({cache}) and offline mode (HF_HUB_OFFLINE) is on; "
        "unset HF_HUB_OFFLINE to fetch it once"
    )


# ---------------------------------------------------------------------- public API
def resolve_commit(repo: str, revision: str, *, allow_branch: bool = False) -> str:
    """40-hex commit for revision. A revision that is not a 40-hex sha is an error (HubError with
    the fix: 'pin revision to a 40-hex commit') unless allow_branch. Offline: only a full sha works
    (and only if it is in the local cache).

    A full sha already in the local cache is returned without asking the Hub (the cache only holds
    commits the Hub served for this repo); any other sha is checked against the Hub."""
    _check_repo(repo)
    is_commit = bool(_COMMIT.fullmatch(revision or ""))
    commit = revision.lower() if is_commit else None
    cache = cache_dir_default()
    if is_offline():
        if commit is None:
            raise _fail(
                f"{repo}: revision {revision!r} is a branch or tag and offline mode (HF_HUB_OFFLINE) cannot resolve it; "
                "pin revision to a 40-hex commit"
            )
        if not _in_cache(cache, repo, commit):
            raise _offline_missing(f"{repo}@{commit}", cache)
        return commit
    if commit is not None:
        if _in_cache(cache, repo, commit):
            return commit
        with _hub_errors(f"{repo}@{commit}"):
            sha = _api().model_info(repo, revision=commit, timeout=_API_TIMEOUT).sha
        if (sha or "").lower() != commit:
            raise _fail(f"{repo}@{commit}: the Hub resolved this commit to {sha!r}; check HF_ENDPOINT points at a real Hub")
        return commit
    if not allow_branch:
        now = ""
        try:
            with _hub_errors(f"{repo}@{revision}"):
                current = _api().model_info(repo, revision=revision, timeout=_HINT_TIMEOUT).sha
            if current and _COMMIT.fullmatch(current):
                now = f" (it points to {current.lower()} now)"
        except HubError:
            pass
        raise _fail(f"{repo}: revision {revision!r} is a branch or tag and can move{now}; pin revision to a 40-hex commit")
    with _hub_errors(f"{repo}@{revision}"):
        sha = _api().model_info(repo, revision=revision, timeout=_API_TIMEOUT).sha
    if not sha or not _COMMIT.fullmatch(sha):
        raise _fail(f"{repo}@{revision}: the Hub returned no commit for this revision; check HF_ENDPOINT points at a real Hub")
    return sha.lower()


def list_files(repo: str, commit: str, patterns: Sequence[str] | None) -> list[RemoteFile]:
    """Files at that commit matching fnmatch patterns (None = all), sorted by path, with size
    and LFS sha256 (HfApi.list_repo_tree(recursive=True) at the commit).

    The list of a commit never changes: it is kept in the Hugging Face cache (trees/<commit>.json, shared
    with huggingface_hub's snapshot_download) and read from there afterwards, online and offline."""
    _check_repo(repo)
    commit = _check_commit(repo, commit)
    cache = cache_dir_default()
    files = _read_listing(cache, repo, commit)
    if files is None:
        if is_offline():
            raise _offline_missing(f"{repo}@{commit}: the file list", cache)
        with _hub_errors(f"{repo}@{commit}"):
            entries = [
                entry
                for entry in _api().list_repo_tree(repo, revision=commit, recursive=True)
                if isinstance(entry, RepoFile)
            ]
        files = []
        for entry in entries:
            lfs = entry.lfs
            size = lfs.size if lfs is not None else entry.size
            if size is None:
                raise _fail(f"{repo}@{commit}: the Hub reported no size for {entry.path}; check HF_ENDPOINT points at a real Hub")
            files.append(
                RemoteFile(
                    path=entry.path,
                    size=int(size),
                    sha256=lfs.sha256.lower() if lfs is not None else None,
                    blob_id=None if lfs is not None else entry.blob_id,
                )
            )
        _write_listing(cache, repo, commit, entries)
    if patterns is not None:
        files = [f for f in files if any(fnmatch.fnmatchcase(f.path, pattern) for pattern in patterns)]
    return sorted(files, key=lambda f: f.path)


_MEMO: dict[tuple, str] = {}


def _sha256(path: Path, hash_cache: "HashCache | None") -> str:
    if hash_cache is not None:
        return hash_cache.hash(path)
    real = path.resolve()
    stat = real.stat()
    key = (str(real), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    value = _MEMO.get(key)
    if value is None:
        value = _MEMO[key] = hash_file(real)
    return value


def _git_blob_id(path: Path) -> str:
    sha = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _evict(local: Path) -> None:
    """Remove a damaged file from the cache (snapshot link and blob) so the next run downloads it again."""
    try:
        blob = local.resolve()
        local.unlink(missing_ok=True)
        if blob != local:
            blob.unlink(missing_ok=True)
    except OSError as error:
        logger.warning("could not remove damaged cache file %s: %s", local, error.strerror)


def _verify(repo: str, commit: str, file: RemoteFile, local: Path, hash_cache: "HashCache | None") -> None:
    what = f"{repo}@{commit[:12]}: {file.path}"
    size = local.stat().st_size
    if size != file.size:
        _evict(local)
        raise _fail(f"{what} has {size} bytes but the Hub lists {file.size}; the damaged copy was removed from the cache, run again")
    if file.sha256 is not None:
        actual = _sha256(local, hash_cache)
        if actual != file.sha256.lower():
            _evict(local)
            raise _fail(
                f"{what} has sha256 {actual} but the Hub's LFS metadata says {file.sha256}; "
                "the damaged copy was removed from the cache, run again (if it persists, the Hub's copy is damaged)"
            )
    elif file.blob_id is not None:
        actual = _git_blob_id(local)
        if actual != file.blob_id.lower():
            _evict(local)
            raise _fail(
                f"{what} has git blob id {actual} but the Hub says {file.blob_id}; "
                "the damaged copy was removed from the cache, run again"
            )


class _Progress:
    """Reports (path, bytes done, total) to the caller; `bar` is a silent tqdm for huggingface_hub's
    `tqdm_class` that feeds it (on resume, huggingface_hub may also count bytes back down)."""

    def __init__(self, path: str, total: int, report: Callable[[str, int, int], None]):
        self.path, self.total, self.report, self.last = path, total, report, -1
        progress = self

        class Bar(hf_tqdm):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)
                self.done = int(kwargs.get("initial") or 0)

            def update(self, n: float | None = 1) -> bool | None:
                self.done += int(n or 0)
                progress(self.done)
                return None

        self.bar = Bar

    def __call__(self, done: int) -> None:
        if done != self.last:
            self.last = done
            self.report(self.path, done, self.total)


def download(
    repo: str,
    commit: str,
    files: Sequence[RemoteFile],
    *,
    cache_dir: Path | None,
    progress: Callable[[str, int, int], None] | None = None,
    hash_cache: "HashCache | None" = None,
) -> dict[str, Path]:
    """Download (or reuse from the HF cache) each file at that commit; return path -> local file.
    Resumes partial downloads (huggingface_hub does this). Verifies each LFS file's sha256 against
    RemoteFile.sha256 and raises HubError naming the file if it differs. Honours HF_HUB_OFFLINE
    (cache only; a clear HubError naming the missing files otherwise).

    The local file is the snapshot path in the Hugging Face cache (a symlink to its blob). Non-LFS files
    are checked against their git blob id and every file against its size; a damaged file is removed from
    the cache. huggingface_hub 2.4.0 resumes a broken transfer within the call (a Range request from the
    last whole 10 MiB chunk written); a partial file does not outlive the process. `progress(path,
    bytes_done, total)` is called as bytes arrive and once per file when done. `hash_cache` (e.g.
    `Store.hashes`) spares re-hashing unchanged cached files in every new process."""
    _check_repo(repo)
    commit = _check_commit(repo, commit)
    cache = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    offline = is_offline()
    result: dict[str, Path] = {}
    missing: list[str] = []
    for file in files:
        reporter = _Progress(file.path, file.size, progress) if progress else None
        with _hub_errors(f"{repo}@{commit[:12]}: {file.path}"):
            try:
                local = Path(
                    hf_hub_download(
                        repo_id=repo,
                        filename=file.path,
                        revision=commit,
                        cache_dir=cache,
                        endpoint=endpoint(),
                        local_files_only=offline,
                        tqdm_class=reporter.bar if reporter else None,
                        library_name="modelforge",
                        library_version=__version__,
                    )
                )
            except hf_errors.LocalEntryNotFoundError:
                if not offline:
                    raise
                missing.append(file.path)
                continue
        _verify(repo, commit, file, local, hash_cache)
        if reporter:
            reporter(file.size)
        logger.debug("%s@%s: %s is %s", repo, commit[:12], file.path, local)
        result[file.path] = local
    if missing:
        named = ", ".join(missing[:_LISTED_MISSING])
        if len(missing) > _LISTED_MISSING:
            named += f" and {len(missing) - _LISTED_MISSING} more"
        raise _unavailable(
            f"{repo}@{commit[:12]}: offline mode (HF_HUB_OFFLINE) is on and the Hugging Face cache ({cache}) lacks "
            f"{named}; unset HF_HUB_OFFLINE and run again to download them"
        )
    return result


def safetensors_headers(repo: str, commit: str) -> dict[str, dict]:
    """Tensor headers of every .safetensors file without downloading weights (range requests;
    HfApi.parse_safetensors_file_metadata for each file at the commit).

    path -> the header as stored in the file: tensor name -> {"dtype", "shape", "data_offsets"} (offsets
    relative to the end of the header), plus "__metadata__" when the file has metadata. A file already in
    the Hugging Face cache is read there instead (which is all offline mode can do)."""
    _check_repo(repo)
    commit = _check_commit(repo, commit)
    shards = [f.path for f in list_files(repo, commit, ["*.safetensors"])]
    snapshot = _snapshot_dir(cache_dir_default(), repo, commit)
    headers: dict[str, dict] = {}
    remote = [path for path in shards if not (snapshot / path).is_file()]
    if remote and is_offline():
        named = ", ".join(remote[:_LISTED_MISSING]) + (f" and {len(remote) - _LISTED_MISSING} more" if len(remote) > _LISTED_MISSING else "")
        raise _unavailable(
            f"{repo}@{commit[:12]}: offline mode (HF_HUB_OFFLINE) is on and the Hugging Face cache lacks {named}, "
            "whose tensor headers are needed; unset HF_HUB_OFFLINE and run again"
        )
    api = _api() if remote else None
    for path in shards:
        if path not in remote:
            headers[path] = _read_local_header(repo, commit, path, snapshot / path)
            continue
        with _hub_errors(f"{repo}@{commit[:12]}: {path}"):
            parsed = api.parse_safetensors_file_metadata(repo, path, revision=commit)
        header: dict[str, Any] = {"__metadata__": dict(parsed.metadata)} if parsed.metadata else {}
        for name, tensor in parsed.tensors.items():
            header[name] = {"dtype": tensor.dtype, "shape": list(tensor.shape), "data_offsets": list(tensor.data_offsets)}
        headers[path] = header
    return headers


def _read_local_header(repo: str, commit: str, path: str, local: Path) -> dict:
    what = f"{repo}@{commit[:12]}: {path}"
    try:
        with open(local, "rb") as handle:
            prefix = handle.read(8)
            (length,) = struct.unpack("<Q", prefix) if len(prefix) == 8 else (None,)
            if length is None or length > _MAX_HEADER:
                raise _fail(f"{what}: the cached file is not a safetensors file; delete it from the cache and run again online")
            header = json.loads(handle.read(length))
    except OSError:
        raise _fail(f"{what}: cannot read the cached file; run again online to fetch it") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _fail(f"{what}: the cached file's header is not valid JSON; delete it from the cache and run again online") from None
    if not isinstance(header, dict):
        raise _fail(f"{what}: the cached file's header is not a JSON object; delete it from the cache and run again online")
    return header
