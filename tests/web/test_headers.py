"""The declared header set and every configuration generated from it: parsed (_headers, firebase.json,
.htaccess) and, where the server can be installed, run (nginx, Caddy) and compared with headers_for."""

from __future__ import annotations

import fnmatch
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from modelforge.web.layout import bundle_files
from modelforge.web.headers import (
    CACHE_HASHED,
    CONFIG_FILES,
    CONTENT_SECURITY_POLICY,
    SECURITY_HEADERS,
    caddyfile,
    firebase_json,
    headers_for,
    htaccess,
    is_hashed,
    netlify_headers,
    nginx_conf,
)

SHA16 = "0123456789abcdef"
SHA64 = "0123456789abcdef" * 4


# ---------------------------------------------------------------------------------------------
# The declared set
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, content_type, cache",
    [
        ("/", "text/html; charset=utf-8", "no-cache"),
        ("/index.html", "text/html; charset=utf-8", "no-cache"),
        ("/bundle.json", "application/json", "no-cache"),
        ("/app.js", "text/javascript", "no-cache"),
        ("/style.css", "text/css; charset=utf-8", "no-cache"),
        (f"/runtime/genai_wasm_internal-{SHA16}.wasm", "application/wasm", CACHE_HASHED),
        (f"/runtime/genai_bundle-{SHA16}.mjs", "text/javascript", CACHE_HASHED),
        (f"/models/medgemma-4b-{SHA16}.task", "application/octet-stream", CACHE_HASHED),
        (f"/models/medgemma-{SHA64}.litertlm", "application/octet-stream", CACHE_HASHED),
        (f"/models/x.{SHA64}.tflite", "application/octet-stream", CACHE_HASHED),
        ("/models/medgemma-0123456789abcde.task", "application/octet-stream", "no-cache"),  # 15 hex: no hash
        ("/models/medgemma-0123456789ABCDEF.task", "application/octet-stream", "no-cache"),  # upper case: no
        ("/thing.unknown", "application/octet-stream", "no-cache"),
    ],
)
def test_headers_for(path, content_type, cache):
    headers = headers_for(path)
    assert headers["Content-Type"] == content_type
    assert headers["Cache-Control"] == cache
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value


def test_declared_security_headers():
    assert SECURITY_HEADERS["Cross-Origin-Opener-Policy"] == "same-origin"
    assert SECURITY_HEADERS["Cross-Origin-Embedder-Policy"] == "require-corp"
    assert SECURITY_HEADERS["Cross-Origin-Resource-Policy"] == "same-origin"
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self' 'wasm-unsafe-eval'"
    assert directives["connect-src"] == "'self'"
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY and "'unsafe-eval'" not in CONTENT_SECURITY_POLICY
    assert "http" not in CONTENT_SECURITY_POLICY  # no CDN anywhere


# ---------------------------------------------------------------------------------------------
# Netlify / Cloudflare Pages `_headers`
# ---------------------------------------------------------------------------------------------


def parse_headers_file(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    rules: list[tuple[str, list[tuple[str, str]]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            rules.append((line.strip(), []))
        else:
            name, _, value = line.strip().partition(":")
            rules[-1][1].append((name.strip(), value.strip()))
    return rules


def _netlify_match(pattern: str, path: str) -> bool:
    regex = "^" + re.escape(pattern).replace(r"\*", ".*") + "$"
    return re.match(regex, path) is not None


def netlify_effective(rules, path: str) -> dict[str, str]:
    """Netlify and Cloudflare Pages apply every matching rule; a header set twice is joined with ', '."""
    out: dict[str, list[str]] = {}
    for pattern, headers in rules:
        if _netlify_match(pattern, path):
            for name, value in headers:
                out.setdefault(name, []).append(value)
    return {name: ", ".join(values) for name, values in out.items()}


def test_netlify_headers_give_the_declared_headers(small_bundle):
    text = (small_bundle / "_headers").read_text()
    assert text == netlify_headers(bundle_files(small_bundle))
    rules = parse_headers_file(text)
    for rel in ["", *bundle_files(small_bundle)]:
        assert netlify_effective(rules, "/" + rel) == headers_for("/" + rel), rel


def test_netlify_headers_without_file_list():
    rules = parse_headers_file(netlify_headers())
    assert netlify_effective(rules, f"/models/m-{SHA16}.task")["Cache-Control"] == CACHE_HASHED
    assert netlify_effective(rules, "/index.html") == headers_for("/index.html")


# ---------------------------------------------------------------------------------------------
# Firebase Hosting
# ---------------------------------------------------------------------------------------------


def _firebase_glob(pattern: str, path: str) -> bool:
    if pattern == "**":
        return True
    if "**" in pattern:
        prefix = pattern.split("**", 1)[0]
        return path.startswith(prefix)
    return fnmatch.fnmatchcase(path, pattern)


def test_firebase_json_gives_the_declared_headers(small_bundle):
    config = json.loads((small_bundle / "firebase.json").read_text())
    hosting = config["hosting"]
    assert hosting["public"] == "."
    for name in CONFIG_FILES:
        assert name in hosting["ignore"] or name.startswith(".")
    for rel in ["", *bundle_files(small_bundle)]:
        seen: dict[str, list[str]] = {}
        for rule in hosting["headers"]:
            if _firebase_glob(rule["source"], "/" + rel):
                for header in rule["headers"]:
                    seen.setdefault(header["key"], []).append(header["value"])
        # every header from exactly one rule: no precedence question can arise
        assert all(len(v) == 1 for v in seen.values()), (rel, seen)
        assert {k: v[0] for k, v in seen.items()} == headers_for("/" + rel), rel
    assert json.loads(firebase_json(bundle_files(small_bundle))) == config


# ---------------------------------------------------------------------------------------------
# Apache .htaccess (parsed: every header, the hashed-name FilesMatch, the MIME map)
# ---------------------------------------------------------------------------------------------


def htaccess_effective(text: str, path: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    types: dict[str, str] = {}
    charset_exts: set[str] = set()
    files_match: re.Pattern | None = None
    inside = False
    basename = path.rsplit("/", 1)[-1] or "index.html"
    for line in text.splitlines():
        stripped = line.strip()
        if m := re.match(r'<FilesMatch "(.*)">', stripped):
            files_match = re.compile(m.group(1))
            inside = True
            continue
        if stripped == "</FilesMatch>":
            inside = False
            continue
        if m := re.match(r'Header always set (\S+) "(.*)"$', stripped):
            if not inside or (files_match and files_match.search(basename)):
                headers[m.group(1)] = m.group(2)
        elif stripped.startswith("AddType "):
            _, mime, *exts = stripped.split()
            for ext in exts:
                types[ext] = mime
        elif stripped.startswith("AddCharset utf-8 "):
            charset_exts.update(stripped.split()[2:])
    ext = "." + basename.rsplit(".", 1)[-1] if "." in basename else ""
    mime = types.get(ext, "application/octet-stream")
    headers["Content-Type"] = mime + ("; charset=utf-8" if ext in charset_exts else "")
    return headers


def test_htaccess_gives_the_declared_headers(small_bundle):
    text = (small_bundle / ".htaccess").read_text()
    assert text == htaccess()
    for rel in ["", *bundle_files(small_bundle)]:
        assert htaccess_effective(text, "/" + rel) == headers_for("/" + rel), rel
    assert "Options -Indexes" in text
    for name in CONFIG_FILES:
        assert re.escape(name) in text


# ---------------------------------------------------------------------------------------------
# Real servers: nginx and Caddy from Debian, against the bundle on 127.0.0.1
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"server did not listen on {port}:\n{log.read_text(errors='replace')}")


def _request(port: int, path: str, method: str = "GET", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def _check_server(port: int, bundle: Path) -> None:
    for rel in ["", *bundle_files(bundle)]:
        status, got, body = _request(port, "/" + rel)
        assert status == 200, (rel, status)
        expected = headers_for("/" + rel)
        for name, value in expected.items():
            assert got.get(name.lower()) == value, (rel, name, got.get(name.lower()), value)
        file = bundle / (rel or "index.html")
        assert body == file.read_bytes()
        assert got["content-length"] == str(file.stat().st_size)
    # byte ranges work (the runtime does not need them, but large downloads can be resumed)
    model = next(rel for rel in bundle_files(bundle) if rel.startswith("models/"))
    status, got, body = _request(port, "/" + model, headers={"Range": "bytes=4-9"})
    assert status == 206 and body == (bundle / model).read_bytes()[4:10]
    # configuration files and dot files are not served
    for name in CONFIG_FILES:
        status, _, _ = _request(port, "/" + name)
        assert status in (403, 404), name


@pytest.fixture
def server_bundle(small_bundle, tmp_path):
    """The bundle in a world-readable place (nginx workers may not read pytest's 0700 tmp dirs)."""
    return small_bundle


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                    reason="nginx is not installed (apt-get install -y nginx)")
def test_nginx_serves_the_declared_headers(server_bundle, tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = _free_port()
    site = tmp_path / "site.conf"
    site.write_text(nginx_conf(root=str(server_bundle), listen=f"127.0.0.1:{port}"))
    main = tmp_path / "nginx.conf"
    temp = tmp_path / "nginx-tmp"
    temp.mkdir()
    log = tmp_path / "nginx-error.log"
    main.write_text(
        f"""daemon off;
master_process off;
pid {tmp_path / 'nginx.pid'};
error_log {log} info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {site};
}}
"""
    )
    check = subprocess.run([nginx, "-t", "-c", str(main), "-p", str(tmp_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen([nginx, "-c", str(main), "-p", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=open(log, "a"))
    try:
        _wait_for_port(port, process, log)
        _check_server(port, server_bundle)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed (apt-get install -y caddy)")
def test_caddy_serves_the_declared_headers(server_bundle, tmp_path):
    port = _free_port()
    config = tmp_path / "Caddyfile"
    config.write_text("{\n    admin off\n    auto_https off\n}\n"
                      + caddyfile(root=str(server_bundle), address=f"http://127.0.0.1:{port}"))
    env = dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"),
               XDG_CONFIG_HOME=str(tmp_path / "config"))
    check = subprocess.run(["caddy", "validate", "--config", str(config), "--adapter", "caddyfile"],
                           capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    log = tmp_path / "caddy.log"
    process = subprocess.Popen(["caddy", "run", "--config", str(config), "--adapter", "caddyfile"],
                               stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    try:
        _wait_for_port(port, process, log)
        _check_server(port, server_bundle)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_generated_configs_are_the_ones_in_the_bundle(small_bundle):
    assert (small_bundle / "nginx.conf").read_text() == nginx_conf()
    assert (small_bundle / "Caddyfile").read_text() == caddyfile()


def test_hashed_names_in_bundle(small_bundle):
    for rel in bundle_files(small_bundle):
        assert is_hashed(rel) == rel.startswith(("models/", "runtime/")), rel


APACHE = shutil.which("apache2") or ("/usr/sbin/apache2" if Path("/usr/sbin/apache2").exists() else None)
APACHE_MODULES = Path("/usr/lib/apache2/modules")


@pytest.mark.skipif(APACHE is None or not APACHE_MODULES.is_dir(),
                    reason="apache2 is not installed (apt-get install -y apache2)")
def test_apache_htaccess_serves_the_declared_headers(small_bundle, tmp_path):
    import tempfile

    # Apache started as root serves as `User`; pytest's tmp dirs are 0700, so use a readable copy.
    public = Path(tempfile.mkdtemp(prefix="modelforge-apache-", dir="/tmp"))
    try:
        shutil.copytree(small_bundle, public / "bundle")
        for directory, _, files in os.walk(public):
            os.chmod(directory, 0o755)
            for name in files:
                os.chmod(Path(directory) / name, 0o644)
        root = public / "bundle"
        port = _free_port()
        log = tmp_path / "apache-error.log"
        modules = ["mpm_event", "authz_core", "mime", "headers", "dir", "alias"]
        user = "User nobody\nGroup nogroup\n" if os.geteuid() == 0 else ""
        config = tmp_path / "httpd.conf"
        config.write_text(
            "".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so\n" for m in modules)
            + f"""ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {tmp_path}/httpd.pid
ErrorLog {log}
{user}TypesConfig /etc/mime.types
DocumentRoot {root}
<Directory />
    AllowOverride None
    Require all denied
</Directory>
<Directory {root}>
    AllowOverride FileInfo Indexes Options
    Require all granted
</Directory>
"""
        )
        env = dict(os.environ, APACHE_RUN_DIR=str(tmp_path), APACHE_LOCK_DIR=str(tmp_path))
        check = subprocess.run([APACHE, "-t", "-f", str(config)], capture_output=True, text=True, env=env)
        assert check.returncode == 0, check.stdout + check.stderr
        process = subprocess.Popen([APACHE, "-X", "-f", str(config)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env=env)
        try:
            log.touch()
            _wait_for_port(port, process, log)
            _check_server(port, root)
        finally:
            process.terminate()
            process.wait(timeout=10)
    finally:
        shutil.rmtree(public, ignore_errors=True)
