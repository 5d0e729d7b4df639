"""The local server: exactly the declared headers, ranges, HEAD, conditional requests, and nothing
outside the bundle."""

from __future__ import annotations

import http.client
import os
import socket

import pytest

from modelforge.web.layout import bundle_files
from modelforge.web.headers import CONFIG_FILES, headers_for
from modelforge.web.serve import _parse_range, serve


@pytest.fixture
def server(small_bundle):
    with serve(small_bundle) as srv:
        yield srv


def request(srv, path: str, method: str = "GET", headers: dict | None = None):
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    try:
        # skip_host etc. are not needed; send the raw path untouched (no client-side normalisation)
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def raw_request(srv, line: bytes) -> bytes:
    with socket.create_connection((srv.host, srv.port), timeout=10) as sock:
        sock.sendall(line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_every_file_has_exactly_the_declared_headers(server, small_bundle):
    for rel in ["", *bundle_files(small_bundle)]:
        status, got, body = request(server, "/" + rel)
        assert status == 200, rel
        for name, value in headers_for("/" + rel).items():
            assert got[name.lower()] == value, (rel, name)
        file = small_bundle / (rel or "index.html")
        assert body == file.read_bytes()
        assert got["content-length"] == str(file.stat().st_size)
        assert got["accept-ranges"] == "bytes"
        assert "etag" in got and "last-modified" in got
        # nothing beyond the declared set, the entity headers and the basics
        allowed = {n.lower() for n in headers_for("/" + rel)} | {
            "content-length", "accept-ranges", "etag", "last-modified", "server", "date"}
        assert set(got) <= allowed, set(got) - allowed


def test_url_is_loopback_and_port_is_free(server):
    assert server.url == f"http://127.0.0.1:{server.port}/"
    assert server.port > 0


def test_head_has_headers_and_length_but_no_body(server, small_bundle):
    rel = next(r for r in bundle_files(small_bundle) if r.startswith("models/"))
    status, got, body = request(server, "/" + rel, method="HEAD")
    assert status == 200
    assert body == b""
    assert got["content-length"] == str((small_bundle / rel).stat().st_size)
    assert got["cache-control"] == "public, max-age=31536000, immutable"


@pytest.mark.parametrize(
    "spec, expected",
    [("bytes=0-9", (0, 9)), ("bytes=10-", (10, None)), ("bytes=-5", ("-5", None)), ("bytes=3-3", (3, 3)),
     ("bytes=5-100000000", (5, None))],
)
def test_ranges(server, small_bundle, spec, expected):
    rel = next(r for r in bundle_files(small_bundle) if r.startswith("models/"))
    data = (small_bundle / rel).read_bytes()
    size = len(data)
    start, end = expected
    if start == "-5":
        start, end = size - 5, size - 1
    end = size - 1 if end is None else end
    status, got, body = request(server, "/" + rel, headers={"Range": spec})
    assert status == 206
    assert body == data[start : end + 1]
    assert got["content-range"] == f"bytes {start}-{end}/{size}"
    assert got["content-length"] == str(end - start + 1)
    assert got["cross-origin-resource-policy"] == "same-origin"
    # HEAD with a range: same headers, no body
    status, got_head, body = request(server, "/" + rel, method="HEAD", headers={"Range": spec})
    assert status == 206 and body == b"" and got_head["content-range"] == got["content-range"]


def test_unsatisfiable_and_ignored_ranges(server, small_bundle):
    rel = next(r for r in bundle_files(small_bundle) if r.startswith("models/"))
    size = (small_bundle / rel).stat().st_size
    status, got, _ = request(server, "/" + rel, headers={"Range": f"bytes={size}-"})
    assert status == 416 and got["content-range"] == f"bytes */{size}"
    assert got["cross-origin-embedder-policy"] == "require-corp"
    for spec in ("bytes=0-1,4-5", "items=0-1", "bytes=9-3", "bytes=abc"):
        status, got, body = request(server, "/" + rel, headers={"Range": spec})
        assert status == 200 and len(body) == size, spec


def test_if_range_mismatch_sends_the_whole_file(server, small_bundle):
    rel = "bundle.json"
    size = (small_bundle / rel).stat().st_size
    status, _, body = request(server, "/" + rel, headers={"Range": "bytes=0-3", "If-Range": '"stale"'})
    assert status == 200 and len(body) == size


def test_conditional_get(server):
    status, got, _ = request(server, "/bundle.json")
    etag = got["etag"]
    status, got304, body = request(server, "/bundle.json", headers={"If-None-Match": etag})
    assert status == 304 and body == b""
    assert got304["cache-control"] == "no-cache"
    status, _, _ = request(server, "/bundle.json", headers={"If-Modified-Since": got["last-modified"]})
    assert status == 304


@pytest.mark.parametrize(
    "path",
    [
        "/../etc/passwd",
        "/..%2f..%2fetc%2fpasswd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/%2E%2E/bundle.json",
        "/models/..%2f..%2f..%2fetc%2fpasswd",
        "/models/%2e%2e/bundle.json",
        "/./bundle.json",
        "/..\\..\\etc\\passwd",
        "/%5c..%5cetc%5cpasswd",
        "/bundle.json%00.html",
        "//etc/passwd",
        "/etc/passwd",
        "/%ff%fe",
    ],
)
def test_path_traversal_is_refused(server, path):
    status, got, body = request(server, path)
    assert status in (403, 404), (path, status)
    assert b"root:" not in body
    assert got["cross-origin-opener-policy"] == "same-origin"


def test_absolute_form_and_garbage_request_targets(server):
    assert b" 404 " in raw_request(server, b"GET http://evil/../../etc/passwd HTTP/1.1").split(b"\r\n", 1)[0]
    assert b" 404 " in raw_request(server, b"GET ../../etc/passwd HTTP/1.1").split(b"\r\n", 1)[0]


def test_symlinks_leaving_the_bundle_are_refused(small_bundle, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (small_bundle / "leak.txt").symlink_to(outside)
    (small_bundle / "leakdir").symlink_to(tmp_path)
    (small_bundle / "inside.json").symlink_to(small_bundle / "bundle.json")
    with serve(small_bundle) as srv:
        status, _, body = request(srv, "/leak.txt")
        assert status in (403, 404) and body != b"secret"
        status, _, body = request(srv, "/leakdir/secret.txt")
        assert status in (403, 404) and body != b"secret"
        status, _, body = request(srv, "/inside.json")
        assert status == 200 and body == (small_bundle / "bundle.json").read_bytes()


def test_a_symlink_inside_the_bundle_to_a_hidden_file_is_refused(small_bundle):
    """`alias -> .env`: the name asked for is not hidden, the file served would be."""
    (small_bundle / ".env").write_text("API_KEY=secret")
    (small_bundle / ".git").mkdir()
    (small_bundle / ".git" / "config").write_text("[remote] url = https://token@example")
    (small_bundle / "alias").symlink_to(".env")
    (small_bundle / "alias.txt").symlink_to(small_bundle / ".env")
    (small_bundle / "gitconfig").symlink_to(".git/config")
    (small_bundle / "dotdir").symlink_to(".git")
    config_file = sorted(CONFIG_FILES)[0]
    (small_bundle / config_file).write_text("secret server configuration")
    (small_bundle / "config-alias").symlink_to(config_file)
    with serve(small_bundle) as srv:
        for path in ("/alias", "/alias.txt", "/gitconfig", "/dotdir/config", "/config-alias"):
            status, _, body = request(srv, path)
            assert status in (403, 404) and b"secret" not in body and b"token" not in body, path


def test_config_dot_and_directory_requests_are_404(server):
    for name in CONFIG_FILES:
        assert request(server, "/" + name)[0] == 404, name
    assert request(server, "/models/")[0] == 404
    assert request(server, "/models")[0] == 404
    assert request(server, "/nope.html")[0] == 404


def test_only_get_and_head(server):
    status, got, _ = request(server, "/bundle.json", method="POST")
    assert status == 405 and got["allow"] == "GET, HEAD"
    assert request(server, "/bundle.json", method="DELETE")[0] == 405


def test_query_strings_are_ignored(server, small_bundle):
    status, _, body = request(server, "/bundle.json?v=2#x")
    assert status == 200 and body == (small_bundle / "bundle.json").read_bytes()


def test_close_stops_serving(small_bundle):
    srv = serve(small_bundle)
    port = srv.port
    srv.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_serve_refuses_a_missing_directory(tmp_path):
    with pytest.raises((FileNotFoundError, NotADirectoryError)):
        serve(tmp_path / "missing")


def test_parse_range_unit():
    assert _parse_range("bytes=0-0", 10) == (0, 0)
    assert _parse_range("bytes=-20", 10) == (0, 9)
    assert _parse_range("bytes=-0", 10) == "unsatisfiable"
    assert _parse_range("bytes=10-", 10) == "unsatisfiable"
    assert _parse_range("bytes= 2-4", 10) == (2, 4)
    assert _parse_range("bytes=1-2,3-4", 10) is None


def test_large_file_streams(small_bundle):
    big = small_bundle / "models" / ("big-" + "a" * 16 + ".bin")
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    with serve(small_bundle) as srv:
        status, got, body = request(srv, "/models/" + big.name)
        assert status == 200 and body == big.read_bytes()
        assert got["content-type"] == "application/octet-stream"
