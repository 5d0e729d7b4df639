"""A fake Hugging Face Hub on 127.0.0.1 for tests: serves directories as model repos the way the real Hub
does for huggingface_hub 2.4.0 (model info, tree listing, /resolve with LFS files redirected to a second
"CDN" origin, Range requests), records every request, and can require a token or drop a connection once.

Use the `fake_hub` fixture (import it from here into a test module or conftest.py)."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

# What the Hub's default .gitattributes stores with git-lfs, plus anything over 10 MB.
LFS_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5", ".msgpack", ".model",
    ".tflite", ".litertlm", ".task", ".npy", ".npz", ".pkl", ".zip", ".tar", ".gz", ".zst",
)
LFS_THRESHOLD = 10 * 1024 * 1024
DEFAULT_COMMIT = hashlib.sha1(b"modelforge fake hub, main").hexdigest()
_JSON = "application/json; charset=utf-8"


def git_blob_id(data: bytes) -> str:
    """What git (and the Hub's `blobId`/ETag) calls a file: sha1 of 'blob <size>\\0' + content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class HubFile:
    path: str
    data: bytes  # what the server sends (differs from the metadata once corrupted)
    size: int  # what the metadata says
    sha256: str
    lfs: bool

    @property
    def blob_id(self) -> str:
        """The git blob: the file itself, or its LFS pointer for LFS files."""
        return git_blob_id(lfs_pointer(self.sha256, self.size) if self.lfs else self.data)

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))


@dataclass
class HubRepo:
    name: str
    commit: str
    refs: dict[str, str]
    files: dict[str, HubFile]

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        if revision.lower() == self.commit:
            return self.commit
        return None


@dataclass
class Request:
    server: str  # "hub" or "cdn"
    method: str
    path: str  # as sent, with the query string
    headers: dict[str, str]  # names in lower case
    status: int = 0
    body_bytes: int = 0  # bytes of response body written
    file: str | None = None  # repo file whose content was served (GET/HEAD of a file)
    dropped: bool = False

    @property
    def route(self) -> str:
        return unquote(urlsplit(self.path).path)

    @property
    def is_body(self) -> bool:
        """A GET that sent (some of) a file's content."""
        return self.method == "GET" and self.file is not None and self.status in (200, 206)


class FakeHub:
    """Two HTTP servers in threads: `url` (the Hub: API and /resolve) and `cdn_url` (LFS blobs, no auth)."""

    def __init__(self) -> None:
        self.commit = DEFAULT_COMMIT
        self.repos: dict[str, HubRepo] = {}
        self.token: str | None = None
        self._blobs: dict[str, HubFile] = {}  # sha256 -> file, what the CDN serves
        self._drops: dict[str, int] = {}  # repo file path -> bytes to send before dropping, once
        self._log: list[Request] = []
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self.url = ""
        self.cdn_url = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeHub":
        for role in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, role))
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(server)
            setattr(self, "url" if role == "hub" else "cdn_url", f"http://127.0.0.1:{server.server_address[1]}")
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ content
    def add_repo(self, name: str, directory: Path, *, commit: str | None = None, branches: tuple[str, ...] = ("main",)) -> HubRepo:
        """Serve every file under `directory` as model repo `name` (owner/name) at `commit` (default: `self.commit`)."""
        commit = (commit or self.commit).lower()
        files: dict[str, HubFile] = {}
        for item in sorted(Path(directory).rglob("*")):
            if item.is_file() and ".git" not in item.relative_to(directory).parts:
                data = item.read_bytes()
                path = item.relative_to(directory).as_posix()
                lfs = path.endswith(LFS_SUFFIXES) or len(data) > LFS_THRESHOLD
                entry = HubFile(path, data, len(data), hashlib.sha256(data).hexdigest(), lfs)
                files[path] = entry
                if lfs:
                    self._blobs[entry.sha256] = entry
        repo = HubRepo(name, commit, {branch: commit for branch in branches}, files)
        self.repos[name] = repo
        return repo

    def corrupt(self, repo: str, path: str, data: bytes | None = None) -> None:
        """Serve other bytes for `path` (same length, first byte flipped, by default) while every piece of
        metadata (siblings, ETag, X-Linked-Etag) still describes the original."""
        entry = self.repos[repo].files[path]
        entry.data = data if data is not None else bytes([entry.data[0] ^ 0xFF]) + entry.data[1:]

    def drop_connection_once(self, path: str, after_bytes: int) -> None:
        """The next GET of `path`'s content sends `after_bytes` of the body, then closes the connection."""
        self._drops[path] = after_bytes

    def require_token(self, token: str | None) -> None:
        """Answer 401 (as the Hub does for a private repo) to Hub requests without `Authorization: Bearer <token>`."""
        self.token = token

    # ------------------------------------------------------------------ request log
    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def body_requests(self, path: str | None = None) -> list[Request]:
        """GETs that sent file content (from /resolve or the CDN), optionally for one repo file."""
        return [r for r in self.requests if r.is_body and (path is None or r.file == path)]

    # ------------------------------------------------------------------ handling
    def _record(self, request: Request) -> None:
        with self._lock:
            self._log.append(request)

    def handle(self, handler: BaseHTTPRequestHandler, role: str) -> None:
        request = Request(role, handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()})
        # Logged before answering, and every field set before the bytes it describes are written, so a test
        # that has its response in hand always finds the request complete in the log.
        self._record(request)
        split = urlsplit(handler.path)
        if role == "cdn":
            self._serve_cdn(handler, request, split.path)
        elif split.path == "/api/agent-harnesses":  # huggingface_hub's agent detection (telemetry)
            self._json(handler, request, {"standardEnvVars": [], "harnesses": {}}, None)
        elif split.path.startswith("/api/models/"):
            if self._authorized(handler, request):
                self._serve_api(handler, request, split.path, parse_qs(split.query))
        elif "/resolve/" in split.path:
            if self._authorized(handler, request):
                self._serve_resolve(handler, request, split.path)
        else:
            self._error(handler, request, 404, None, "Not found")

    def _authorized(self, handler, request: Request) -> bool:
        if self.token is None:
            return True
        sent = request.headers.get("authorization")
        if sent == f"Bearer {self.token}":
            return True
        if sent is None:
            self._error(handler, request, 401, "RepoNotFound", "Invalid username or password.")
        else:
            self._error(handler, request, 401, None, "Invalid credentials in Authorization header")
        return False

    def _repo_or_error(self, handler, request: Request, name: str) -> HubRepo | None:
        repo = self.repos.get(name)
        if repo is None:
            # The Hub answers 401 to anonymous requests for a missing repo (it might be private), 404 otherwise.
            status = 404 if "authorization" in request.headers else 401
            self._error(handler, request, status, "RepoNotFound", "Repository not found")
        return repo

    def _commit_or_error(self, handler, request: Request, repo: HubRepo, revision: str) -> str | None:
        commit = repo.resolve(revision)
        if commit is None:
            self._error(handler, request, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def _serve_api(self, handler, request: Request, raw_path: str, query: dict[str, list[str]]) -> None:
        match = re.fullmatch(r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?P<sub>/.*)?)?", raw_path)
        if not match:
            return self._error(handler, request, 404, None, "Not found")
        repo = self._repo_or_error(handler, request, unquote(match["repo"]))
        if repo is None:
            return
        commit = self._commit_or_error(handler, request, repo, unquote(match["rev"] or "main"))
        if commit is None:
            return
        if match["kind"] == "tree":
            return self._serve_tree(handler, request, repo, commit, unquote(match["sub"] or "").strip("/"), query)
        if match["sub"]:
            return self._error(handler, request, 404, None, "Not found")
        with_blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for entry in repo.files.values():
            sibling: dict = {"rfilename": entry.path}
            if with_blobs:
                sibling.update(blobId=entry.blob_id, size=entry.size)
                if entry.lfs:
                    sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
            siblings.append(sibling)
        owner = repo.name.split("/")[0]
        info = {
            "_id": hashlib.md5(repo.name.encode()).hexdigest()[:24],
            "id": repo.name,
            "modelId": repo.name,
            "author": owner,
            "sha": commit,
            "lastModified": "2025-01-01T00:00:00.000Z",
            "createdAt": "2025-01-01T00:00:00.000Z",
            "private": self.token is not None,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "library_name": "transformers",
            "siblings": siblings,
            "usedStorage": sum(entry.size for entry in repo.files.values()),
        }
        self._json(handler, request, info, commit)

    def _serve_tree(self, handler, request: Request, repo: HubRepo, commit: str, folder: str, query) -> None:
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{folder}/" if folder else ""
        if folder and not any(path.startswith(prefix) for path in repo.files):
            return self._error(handler, request, 404, "EntryNotFound", f"{folder} does not exist on {commit}", commit)
        entries: dict[str, dict] = {}
        for entry in repo.files.values():
            if not entry.path.startswith(prefix):
                continue
            rest = entry.path[len(prefix):].split("/")
            if len(rest) > 1:  # folders on the way
                for depth in range(1, len(rest) if recursive else 2):
                    sub = prefix + "/".join(rest[:depth])
                    entries.setdefault(sub, {"type": "directory", "oid": hashlib.sha1(sub.encode()).hexdigest(), "size": 0, "path": sub})
                if not recursive:
                    continue
            item = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": entry.path}
            if entry.lfs:
                item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
            entries[entry.path] = item
        self._json(handler, request, [entries[key] for key in sorted(entries)], commit)

    def _serve_resolve(self, handler, request: Request, raw_path: str) -> None:
        match = re.fullmatch(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", raw_path)
        if not match:
            return self._error(handler, request, 404, None, "Not found")
        repo = self._repo_or_error(handler, request, unquote(match["repo"]))
        if repo is None:
            return
        commit = self._commit_or_error(handler, request, repo, unquote(match["rev"]))
        if commit is None:
            return
        path = unquote(match["file"])
        entry = repo.files.get(path)
        if entry is None:
            return self._error(handler, request, 404, "EntryNotFound", "Entry not found", commit)
        request.file = path
        if entry.lfs:
            # The Hub redirects LFS content to a CDN with a signed URL; the file's identity travels in X-Linked-*.
            location = f"{self.cdn_url}/repos/{entry.sha256[:2]}/{entry.sha256}?X-Amz-Signature=fake&filename={quote(Path(path).name)}"
            request.status = 302
            handler.send_response(302)
            for name, value in (
                ("Location", location),
                ("X-Repo-Commit", commit),
                ("X-Linked-Etag", f'"{entry.sha256}"'),
                ("X-Linked-Size", str(entry.size)),
                ("ETag", f'"{entry.blob_id}"'),
                ("Accept-Ranges", "bytes"),
                ("Content-Length", "0"),
            ):
                handler.send_header(name, value)
            handler.end_headers()
            return
        self._send_content(handler, request, entry, {"X-Repo-Commit": commit, "ETag": f'"{entry.blob_id}"'})

    def _serve_cdn(self, handler, request: Request, raw_path: str) -> None:
        match = re.fullmatch(r"/repos/[0-9a-f]{2}/(?P<sha>[0-9a-f]{64})", raw_path)
        entry = self._blobs.get(match["sha"]) if match else None
        if entry is None:
            return self._error(handler, request, 404, None, "NoSuchKey")
        request.file = entry.path
        self._send_content(handler, request, entry, {"ETag": f'"{entry.sha256}"'})

    def _send_content(self, handler, request: Request, entry: HubFile, headers: dict[str, str]) -> None:
        data = entry.data
        start, end, status = 0, len(data) - 1, 200
        wanted = handler.headers.get("Range")
        if wanted:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
            if match and match[1]:
                start = int(match[1])
                end = min(int(match[2]), len(data) - 1) if match[2] else len(data) - 1
            elif match and match[2]:
                start = max(len(data) - int(match[2]), 0)
            if not match or (not match[1] and not match[2]) or start >= len(data) or start > end:
                return self._error(handler, request, 416, None, "Range Not Satisfiable", extra={"Content-Range": f"bytes */{len(data)}"})
            status = 206
        body = data[start : end + 1]
        request.status = status
        handler.send_response(status)
        headers = {
            **headers,
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(body)),
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{Path(entry.path).name}"',
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        for name, value in headers.items():
            handler.send_header(name, value)
        drop = self._drops.pop(entry.path, None) if handler.command == "GET" else None
        if drop is not None and drop < len(body):
            request.body_bytes, request.dropped = drop, True
        elif handler.command == "GET":
            request.body_bytes = len(body)
        handler.end_headers()
        if handler.command == "HEAD":
            return
        if request.dropped:
            handler.wfile.write(body[:drop])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_WR)  # a clean FIN mid-body: the client sees a short read
            return
        handler.wfile.write(body)

    def _json(self, handler, request: Request, value, commit: str | None) -> None:
        body = json.dumps(value).encode()
        request.status = 200
        request.body_bytes = len(body) if handler.command != "HEAD" else 0
        handler.send_response(200)
        handler.send_header("Content-Type", _JSON)
        handler.send_header("Content-Length", str(len(body)))
        if commit:
            handler.send_header("X-Repo-Commit", commit)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _error(self, handler, request: Request, status: int, code: str | None, message: str, commit: str | None = None, extra: dict | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        request.status = status
        handler.send_response(status)
        handler.send_header("Content-Type", _JSON)
        handler.send_header("Content-Length", str(len(body)))
        if code:
            handler.send_header("X-Error-Code", code)
        handler.send_header("X-Error-Message", message)
        if commit:
            handler.send_header("X-Repo-Commit", commit)
        for name, value in (extra or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)


def _handler(hub: FakeHub, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects from the Hub
        timeout = 10  # an idle keep-alive connection does not hold its thread forever

        def do_GET(self) -> None:
            hub.handle(self, role)

        def do_HEAD(self) -> None:
            hub.handle(self, role)

        def log_message(self, format, *args) -> None:  # quiet
            pass

    return Handler


# ---------------------------------------------------------------------- pytest
@pytest.fixture
def fake_hub(tmp_path, monkeypatch) -> Iterator[FakeHub]:
    """A started FakeHub; HF_ENDPOINT points at it, HF_HOME is a fresh temporary directory, and no token,
    offline flag or cache override leaks in from the environment (nor from ~/.cache/huggingface/token)."""
    import huggingface_hub.constants as constants

    home = tmp_path / "hf-home"
    home.mkdir()
    for name in (
        "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE", "HF_OIDC_RESOURCE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    # huggingface_hub reads these once, at import: keep the tests hermetic whatever the environment was then.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    # With telemetry on, building the user agent fetches {constants.ENDPOINT}/api/agent-harnesses, and
    # constants.ENDPOINT is the real Hub unless HF_ENDPOINT was set before the import: no traffic may leave.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub
