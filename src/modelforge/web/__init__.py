"""The WebGPU web bundle: MediaPipe `.task` files, the static app, the vendored runtime, the
server configurations (one declared header set) and a local server.

Modules: `taskfile` (write/read `.task`), `headers` (header set and server-config generators),
`serve` (local server), `vendor` (runtime files from web/node_modules), `layout` (lay out a bundle: the files the
`web_bundle` step writes).
"""
