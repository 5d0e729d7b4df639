"""The one declared HTTP header set of a web bundle, and every server configuration generated from it.

`headers_for(path)` is the specification: the local server (`serve.py`) sends exactly it, and the
generated configurations for nginx, Caddy, Apache (.htaccess), Netlify / Cloudflare Pages
(`_headers`) and Firebase Hosting (`firebase.json`) are derived from the same tables below; the
tests run nginx and Caddy against a bundle and compare their responses with `headers_for`.

Why each header:
- COOP `same-origin` + COEP `require-corp`: the page is cross-origin isolated (`crossOriginIsolated`),
  which the WASM runtime may use for threads / precise timers; CORP `same-origin` lets every file of
  the bundle be loaded under COEP and nowhere else.
- CSP: everything from the bundle's own origin only (`connect-src 'self'`: the model and runtime
  are never fetched from a CDN), `'wasm-unsafe-eval'` so that WebAssembly can be compiled,
  `blob:` images for the preview of a picked image, nothing inline, no framing.
- Cache-Control: files whose name carries a content hash (16 or 64 hex digits, as write_bundle names
  models and runtime files) never change → `immutable` for a year; everything else (index.html,
  bundle.json, the app's scripts) → `no-cache` (always revalidated).

Files that configure servers (`nginx.conf`, `Caddyfile`, `.htaccess`, `_headers`, `firebase.json`)
sit in the bundle root so a bundle is deployable as is; the servers that can be told so answer 404
for them (and for every dot file).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Mapping

__all__ = [
    "APP_FILES",
    "DEFAULT_TYPE",
    "HASHED_DIRS",
    "all_configs",
    "error_headers",
    "CACHE_HASHED",
    "CACHE_REVALIDATE",
    "CONTENT_SECURITY_POLICY",
    "CONFIG_FILES",
    "HASHED_NAME",
    "MIME_TYPES",
    "SECURITY_HEADERS",
    "caddyfile",
    "cache_control",
    "content_type",
    "firebase_json",
    "headers_for",
    "htaccess",
    "is_hashed",
    "is_hidden",
    "netlify_headers",
    "nginx_conf",
]

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "connect-src 'self'",
        "img-src 'self' blob:",
        "style-src 'self'",
        "worker-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ]
)

# Sent with every response (in this order in the generated configs).
SECURITY_HEADERS: dict[str, str] = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# extension → Content-Type. Anything else is application/octet-stream.
MIME_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".task": "application/octet-stream",
    ".tflite": "application/octet-stream",
    ".weights": "application/octet-stream",
    ".onnx": "application/octet-stream",
    ".data": "application/octet-stream",
    ".litertlm": "application/octet-stream",
    ".bin": "application/octet-stream",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}
DEFAULT_TYPE = "application/octet-stream"

CACHE_HASHED = "public, max-age=31536000, immutable"
CACHE_REVALIDATE = "no-cache"

# A content hash in a file name: "<stem>-<16 or 64 lowercase hex>.<ext>" (also "." or "_" before it).
HASHED_NAME = re.compile(r"[-_.](?:[0-9a-f]{64}|[0-9a-f]{16})\.[A-Za-z0-9]+$")
_HASHED_NAME_SOURCE = r"[-_.](?:[0-9a-f]{64}|[0-9a-f]{16})\.[A-Za-z0-9]+$"

# The app's own (not content-hashed) files at the bundle root.
APP_FILES = ("index.html", "app.js", "accumulator.js", "litert.js", "style.css", "favicon.svg", "bundle.json")
# Server configuration files written into the bundle root: never served where a server can say so.
CONFIG_FILES = ("nginx.conf", "Caddyfile", ".htaccess", "_headers", "firebase.json")
# Directories of the bundle that hold only content-hashed files.
HASHED_DIRS = ("models", "runtime")


def _relative(path: str) -> str:
    """URL path or bundle-relative path → normalised bundle-relative path ('' for the root)."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    norm = posixpath.normpath("/" + path.lstrip("/"))
    rel = norm.lstrip("/")
    return "" if rel == "." else rel


def is_hashed(path: str) -> bool:
    return bool(HASHED_NAME.search(posixpath.basename(_relative(path))))


def is_hidden(path: str) -> bool:
    """Dot files/dirs and the server configuration files: not served."""
    rel = _relative(path)
    parts = rel.split("/") if rel else []
    return any(part.startswith(".") for part in parts) or rel in CONFIG_FILES


def content_type(path: str) -> str:
    rel = _relative(path) or "index.html"
    return MIME_TYPES.get(posixpath.splitext(rel)[1].lower(), DEFAULT_TYPE)


def cache_control(path: str) -> str:
    return CACHE_HASHED if is_hashed(path) else CACHE_REVALIDATE


def headers_for(path: str) -> dict[str, str]:
    """The headers (beyond Content-Length, ETag and the like) that a file of a bundle is served with.
    `path` is the URL path or bundle-relative path; '/' is index.html."""
    headers = dict(SECURITY_HEADERS)
    headers["Content-Type"] = content_type(path)
    headers["Cache-Control"] = cache_control(path)
    return headers


def error_headers() -> dict[str, str]:
    """Headers for error responses (404, 403, 416...): the security set, plain text, no caching."""
    headers = dict(SECURITY_HEADERS)
    headers["Content-Type"] = "text/plain; charset=utf-8"
    headers["Cache-Control"] = CACHE_REVALIDATE
    return headers


def _mime_by_type() -> dict[str, list[str]]:
    """Content-Type (without charset) → extensions (without dot), in table order."""
    grouped: dict[str, list[str]] = {}
    for ext, mime in MIME_TYPES.items():
        grouped.setdefault(mime.split(";")[0], []).append(ext[1:])
    return grouped


def _charset_types() -> list[str]:
    return [mime.split(";")[0] for mime in dict.fromkeys(MIME_TYPES.values()) if "charset=utf-8" in mime]


def _quote_nginx(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------------------------


def nginx_conf(root: str = "/srv/modelforge", listen: str = "8080") -> str:
    """An nginx `server { }` block (include it from `http { }`, e.g. as conf.d/modelforge.conf).

    `add_header` directives are not inherited into a location that has its own, so every location
    repeats the full set; `always` puts them on error responses too."""
    lines = [
        "# Generated by modelforge from the declared header set (modelforge.web.headers). Do not edit.",
        "server {",
        f"    listen {listen};",
        f"    root {root};",
        "    index index.html;",
        "    autoindex off;",
        "    server_tokens off;",
        "    charset utf-8;",
        "    charset_types " + " ".join(_charset_types()) + ";",
        "    default_type " + DEFAULT_TYPE + ";",
        "    types {",
    ]
    for mime, exts in _mime_by_type().items():
        lines.append(f"        {mime} {' '.join(exts)};")
    lines.append("    }")

    def location(header: str, cache: str, body: list[str] | None = None) -> list[str]:
        out = [f"    location {header} {{"]
        for name, value in SECURITY_HEADERS.items():
            out.append(f"        add_header {name} {_quote_nginx(value)} always;")
        out.append(f"        add_header Cache-Control {_quote_nginx(cache)} always;")
        out.extend(body or [])
        out.append("    }")
        return out

    hidden = "|".join(re.escape(name) for name in CONFIG_FILES if not name.startswith("."))
    lines += location(f'~ "(^|/)\\.|^/({hidden})$"', CACHE_REVALIDATE, ["        return 404;"])
    lines += location(f'~ "{_HASHED_NAME_SOURCE}"', CACHE_HASHED)
    lines += location("/", CACHE_REVALIDATE)
    lines.append("}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Caddy (v2 Caddyfile)
# --------------------------------------------------------------------------------------------


def _quote_caddy(value: str) -> str:
    # Inside Caddyfile double quotes only \" is an escape; backslashes stay as they are.
    return '"' + value.replace('"', '\\"') + '"'


def caddyfile(root: str = "/srv/modelforge", address: str = ":8080") -> str:
    """A Caddy v2 Caddyfile. Matchers are mutually exclusive so the order Caddy sorts `header`
    directives in cannot change the result; Content-Type set here is kept by file_server."""
    lines = [
        "# Generated by modelforge from the declared header set (modelforge.web.headers). Do not edit.",
        f"{address} {{",
        f"    root * {root}",
        "    @hidden {",
        "        path_regexp hidden " + _quote_caddy(r"(^|/)\.|^/(" + "|".join(
            re.escape(n) for n in CONFIG_FILES if not n.startswith(".")) + r")$"),
        "    }",
        "    @hashed {",
        "        path_regexp hashed " + _quote_caddy(_HASHED_NAME_SOURCE),
        "    }",
        "    @revalidate {",
        "        not path_regexp " + _quote_caddy(_HASHED_NAME_SOURCE),
        "    }",
        "    header {",
    ]
    for name, value in SECURITY_HEADERS.items():
        lines.append(f"        {name} {_quote_caddy(value)}")
    lines.append("    }")
    lines.append(f"    header @hashed Cache-Control {_quote_caddy(CACHE_HASHED)}")
    lines.append(f"    header @revalidate Cache-Control {_quote_caddy(CACHE_REVALIDATE)}")
    for mime_ext, mime in MIME_TYPES.items():
        matcher = "type_" + mime_ext[1:]
        lines.append(f"    @{matcher} path *{mime_ext}")
        lines.append(f"    header @{matcher} Content-Type {_quote_caddy(mime)}")
    lines += [
        "    handle @hidden {",
        "        header Content-Type \"text/plain; charset=utf-8\"",
        "        respond 404",
        "    }",
        "    file_server",
        "}",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Apache (.htaccess; needs AllowOverride FileInfo Indexes Options, mod_headers, mod_mime)
# --------------------------------------------------------------------------------------------


def htaccess() -> str:
    lines = [
        "# Generated by modelforge from the declared header set (modelforge.web.headers). Do not edit.",
        "# Needs mod_headers and mod_mime, and AllowOverride FileInfo Indexes Options for this directory.",
        "Options -Indexes",
        "DirectoryIndex index.html",
        "AddDefaultCharset Off",
    ]
    for mime, exts in _mime_by_type().items():
        lines.append(f"AddType {mime} " + " ".join("." + e for e in exts))
    charset_exts = [ext for ext, mime in MIME_TYPES.items() if "charset=utf-8" in mime]
    lines.append("AddCharset utf-8 " + " ".join(charset_exts))
    lines.append("<IfModule mod_headers.c>")
    for name, value in SECURITY_HEADERS.items():
        lines.append(f'    Header always set {name} "{value}"')
    lines.append(f'    Header always set Cache-Control "{CACHE_REVALIDATE}"')
    lines.append(f'    <FilesMatch "{_HASHED_NAME_SOURCE}">')
    lines.append(f'        Header always set Cache-Control "{CACHE_HASHED}"')
    lines.append("    </FilesMatch>")
    lines.append("</IfModule>")
    hidden = "|".join(re.escape(n) for n in CONFIG_FILES)
    lines.append(f'RedirectMatch 404 "(^|/)\\.|/({hidden})$"')
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Netlify / Cloudflare Pages (_headers) and Firebase Hosting (firebase.json)
# --------------------------------------------------------------------------------------------


def _served_files(files: Iterable[str] | None) -> list[str]:
    if files is None:
        return list(APP_FILES)
    return sorted({_relative(f) for f in files if not is_hidden(f)})


def netlify_headers(files: Iterable[str] | None = None) -> str:
    """`_headers` for Netlify and Cloudflare Pages.

    Both hosts MERGE the headers of every matching rule (duplicates are joined with ", "), and
    neither has regular expressions, so: one `/*` rule with the security set, then one rule per
    served file with its Content-Type and Cache-Control. `files` are the bundle's files
    (write_bundle passes them); without it the app files plus `/models/*` and `/runtime/*` splats
    (those directories hold only content-hashed files) are written."""
    blocks = ["# Generated by modelforge from the declared header set (modelforge.web.headers). Do not edit."]
    blocks.append("/*\n" + "".join(f"  {k}: {v}\n" for k, v in SECURITY_HEADERS.items()))
    if files is None:
        for directory in HASHED_DIRS:
            blocks.append(f"/{directory}/*\n  Cache-Control: {CACHE_HASHED}\n")
    paths = _served_files(files)
    if "index.html" in paths:
        paths = ["", *paths]
    for rel in paths:
        blocks.append(
            f"/{rel}\n  Content-Type: {content_type(rel)}\n  Cache-Control: {cache_control(rel)}\n"
        )
    return "\n".join(blocks)


def firebase_json(files: Iterable[str] | None = None) -> str:
    """`firebase.json` (Hosting): deploy the bundle directory itself; headers from the declared set.

    Rules are made mutually exclusive for each header name (Firebase applies every matching rule):
    the security set for `**`, then per file (or per directory for `models`/`runtime` when `files`
    is None) the Content-Type and Cache-Control."""
    rules: list[dict] = [
        {"source": "**", "headers": [{"key": k, "value": v} for k, v in SECURITY_HEADERS.items()]}
    ]
    if files is None:
        for directory in HASHED_DIRS:
            rules.append({"source": f"/{directory}/**", "headers": [{"key": "Cache-Control", "value": CACHE_HASHED}]})
    paths = _served_files(files)
    if "index.html" in paths:
        paths = ["", *paths]
    for rel in paths:
        rules.append(
            {
                "source": f"/{rel}",
                "headers": [
                    {"key": "Content-Type", "value": content_type(rel)},
                    {"key": "Cache-Control", "value": cache_control(rel)},
                ],
            }
        )
    config = {
        "hosting": {
            "public": ".",
            "ignore": ["**/.*", *[n for n in CONFIG_FILES if not n.startswith(".")]],
            "cleanUrls": False,
            "trailingSlash": False,
            "headers": rules,
        }
    }
    return json.dumps(config, indent=2, sort_keys=False) + "\n"


def all_configs(files: Iterable[str] | None = None) -> Mapping[str, str]:
    """{file name in the bundle root: text} for every generated server configuration."""
    files = None if files is None else list(files)
    return {
        "nginx.conf": nginx_conf(),
        "Caddyfile": caddyfile(),
        ".htaccess": htaccess(),
        "_headers": netlify_headers(files),
        "firebase.json": firebase_json(files),
    }
