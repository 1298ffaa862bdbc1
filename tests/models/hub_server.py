"""A small Hub-compatible HTTP server for the download tests: serves files at the Hub's URL layout
(/{repo}/resolve/{revision}/{filename}) with the headers huggingface_hub reads (X-Repo-Commit,
ETag, Content-Length) and byte ranges, so the real huggingface_hub client runs against it."""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}   # (repo, filename) → bytes served
        self.cut_first_get_at: int | None = None        # drop the first GET's connection after this many bytes
        self.bytes_per_s: int | None = None             # a slow network, so a test can watch a download
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                server._serve(self, body=False)

            def do_GET(self):
                server._serve(self, body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add(self, repo: str, filename: str, data: bytes) -> None:
        self.files[(repo, filename)] = data

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        self.requests.append((h.command, h.path, h.headers.get("Range")))
        parts = h.path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            h.send_response(404)
            h.send_header("X-Error-Code", "RepoNotFound")
            h.end_headers()
            return
        repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
        data = self.files.get((repo, filename))
        if data is None:
            h.send_response(404)
            h.send_header("X-Error-Code", "EntryNotFound")
            h.send_header("X-Repo-Commit", COMMIT)
            h.end_headers()
            return
        start = 0
        if h.headers.get("Range", "").startswith("bytes="):
            start = int(h.headers["Range"][6:].split("-")[0])
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(data) - start))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if not body:
            return
        end = len(data)
        if self.cut_first_get_at is not None:
            end, self.cut_first_get_at = self.cut_first_get_at, None
            h.close_connection = True  # the network drops: the client sees a short body
        step = 1 << 16
        try:
            for offset in range(start, end, step):
                h.wfile.write(data[offset:min(offset + step, end)])
                if self.bytes_per_s:
                    time.sleep(step / self.bytes_per_s)
        except (BrokenPipeError, ConnectionResetError):  # the client went away
            pass

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
