"""A static server for the probe with COOP/COEP (so the page is cross-origin isolated and ORT's
threaded wasm may run) that records every path served and its size.
usage: python serve.py ROOT PORT (ROOT holds index.html, harness.mjs, ort/, graphs/, cases.json)"""

import functools
import http.server
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".wasm": "application/wasm", ".onnx": "application/octet-stream", ".data": "application/octet-stream"}

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


def server(root: str, port: int):
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, directory=root))


if __name__ == "__main__":
    server(sys.argv[1], int(sys.argv[2])).serve_forever()
