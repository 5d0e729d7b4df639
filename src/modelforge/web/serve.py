"""A local static server for a web bundle, sending exactly the declared headers (`headers_for`).

Serves only regular files inside the bundle directory: `..` (plain or percent-encoded), absolute
paths, backslashes, NUL bytes, dot files, the server-config files, symlinks that resolve outside
the bundle and symlinks to a dot file or a server-config file inside it are answered 404 (403 for a
symlink escaping the bundle); no directory listings. GET and
HEAD only (405 otherwise), single byte ranges (206 / 416), ETag + Last-Modified with
If-None-Match / If-Modified-Since (304) and If-Range.

    server = serve(bundle_dir)          # bound and serving in a background thread
    print(server.url)
    server.wait()                       # blocks until close() or KeyboardInterrupt
"""

from __future__ import annotations

import email.utils
import http.server
import os
import posixpath
import socket
import socketserver
import threading
import urllib.parse
from pathlib import Path

from .headers import error_headers, headers_for, is_hidden

__all__ = ["BundleServer", "serve"]

_CHUNK = 1 << 20


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "BundleServer"
    server_version = "modelforge"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # ---- plumbing -------------------------------------------------------------------------
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        if self.server.log is not None:
            self.server.log(f"{self.address_string()} {format % args}")

    def _send_error(self, status: int, message: str, extra: dict[str, str] | None = None) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        for name, value in error_headers().items():
            self.send_header(name, value)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def _not_allowed(self) -> None:
        self._send_error(405, "method not allowed", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed  # noqa: N815

    # ---- resolution -----------------------------------------------------------------------
    def _resolve(self) -> tuple[int, Path | None, str]:
        """(status, file, bundle-relative path); status 200 when the file may be served."""
        raw = self.path.split("?", 1)[0].split("#", 1)[0]
        if not raw.startswith("/"):
            return 404, None, ""
        try:
            decoded = urllib.parse.unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return 404, None, ""
        if "\x00" in decoded or "\\" in decoded:
            return 404, None, ""
        parts = [p for p in decoded.split("/") if p]
        if any(p in (".", "..") for p in parts):
            return 404, None, ""
        rel = "/".join(parts)
        if decoded.endswith("/") or not rel:
            rel = posixpath.join(rel, "index.html") if rel else "index.html"
        if is_hidden(rel):
            return 404, None, rel
        root = self.server.root
        candidate = root.joinpath(*rel.split("/"))
        try:
            resolved = candidate.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError, RuntimeError, OSError):
            return 404, None, rel
        if not resolved.is_relative_to(root):
            return 403, None, rel
        # A symlink inside the bundle (`alias -> .env`) must not serve what its target's own name
        # would not: the resolved path is checked as the requested one was.
        if is_hidden(resolved.relative_to(root).as_posix()):
            return 404, None, rel
        if not resolved.is_file():
            return 404, None, rel
        return 200, resolved, rel

    # ---- serving --------------------------------------------------------------------------
    def _serve(self, *, head: bool) -> None:
        status, file, rel = self._resolve()
        if status != 200 or file is None:
            self._send_error(status, "forbidden" if status == 403 else "not found")
            return
        try:
            handle = open(file, "rb")
        except OSError:
            self._send_error(404, "not found")
            return
        with handle:
            stat = os.fstat(handle.fileno())
            size = stat.st_size
            etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
            last_modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
            base = headers_for("/" + rel)
            base["ETag"] = etag
            base["Last-Modified"] = last_modified
            base["Accept-Ranges"] = "bytes"

            if self._not_modified(etag, stat.st_mtime):
                self.send_response(304)
                for name, value in base.items():
                    if name != "Content-Type":
                        self.send_header(name, value)
                self.end_headers()
                return

            start, end = 0, size - 1
            status = 200
            range_header = self.headers.get("Range")
            if range_header and self._if_range_ok(etag, last_modified):
                parsed = _parse_range(range_header, size)
                if parsed == "unsatisfiable":
                    self._send_error(416, "range not satisfiable", {"Content-Range": f"bytes */{size}",
                                                                    "Accept-Ranges": "bytes"})
                    return
                if parsed is not None:
                    start, end = parsed
                    status = 206
            length = max(0, end - start + 1)
            self.send_response(status)
            for name, value in base.items():
                self.send_header(name, value)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if head or length == 0:
                return
            handle.seek(start)
            remaining = length
            try:
                while remaining:
                    chunk = handle.read(min(_CHUNK, remaining))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    def _not_modified(self, etag: str, mtime: float) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            tags = [t.strip() for t in inm.split(",")]
            return "*" in tags or etag in tags or f"W/{etag}" in tags
        ims = self.headers.get("If-Modified-Since")
        if ims:
            try:
                since = email.utils.parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError, IndexError, OverflowError):
                return False
            return int(mtime) <= since
        return False

    def _if_range_ok(self, etag: str, last_modified: str) -> bool:
        if_range = self.headers.get("If-Range")
        return if_range is None or if_range.strip() in (etag, last_modified)


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """One `bytes=` range → (start, end) inclusive; 'unsatisfiable'; None to ignore the header
    (malformed, another unit, or several ranges: the whole file is sent, as RFC 9110 allows)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            if not last.isdigit():
                return None
            suffix = int(last)
            if suffix == 0:
                return "unsatisfiable"
            return max(0, size - suffix), size - 1
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        return "unsatisfiable"
    if end < start:
        return None
    return start, min(end, size - 1)


class BundleServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A threaded HTTP server for one bundle directory, serving in a daemon thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path, host: str, port: int, log=None):
        self.root = Path(root).resolve(strict=True)
        if not self.root.is_dir():
            raise NotADirectoryError(f"{root} is not a directory")
        self.log = log
        super().__init__((host, port), _Handler)
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    @property
    def host(self) -> str:
        return self.server_address[0]

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def start(self) -> "BundleServer":
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.serve_forever, kwargs={"poll_interval": 0.1}, name="modelforge-serve", daemon=True
            )
            self._thread.start()
        return self

    def wait(self) -> None:
        """Block until close() (from another thread) or KeyboardInterrupt."""
        try:
            while not self._closed.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
        self.server_close()

    def __enter__(self) -> "BundleServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(bundle_dir: Path, host: str = "127.0.0.1", port: int = 0, *, log=None) -> BundleServer:
    """Bind to (host, port) (port 0 = any free port) and serve `bundle_dir` in a background thread.
    `log`: optional callable taking one line per request (default: silent)."""
    if isinstance(bundle_dir, str):
        bundle_dir = Path(bundle_dir)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    server_class = _BundleServerV6 if ":" in host else BundleServer
    return server_class(bundle_dir, host, port, log=log).start()


class _BundleServerV6(BundleServer):
    address_family = socket.AF_INET6
