"""A loopback stand-in for the Hugging Face hub: answers the requests `huggingface_hub.hf_hub_download` makes.

huggingface_hub asks `HEAD /{repo}/resolve/{revision}/{filename}` for the file's metadata (it needs the
`X-Repo-Commit` and `ETag` headers, and the size), then `GET`s the same URL. A missing file answers 404 with
`X-Error-Code: EntryNotFound`, an unknown repo with `RepoNotFound`, as the hub does.
"""
from __future__ import annotations

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serves {repo id: {file name: bytes}} on 127.0.0.1; `requests` lists (method, path) in arrival order."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos, self.requests = repos, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                hub.requests.append((self.command, self.path))
                status, headers, data = hub.lookup(self.path.split("?", 1)[0])
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def lookup(self, path: str) -> tuple[int, dict[str, str], bytes]:
        parts = path.strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return 404, {"X-Error-Code": "RepoNotFound"}, b"not a file URL"
        repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
        if repo not in self.repos:
            return 404, {"X-Error-Code": "RepoNotFound"}, b"no such repo"
        if filename not in self.repos[repo]:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b"no such file"
        data = self.repos[repo][filename]
        return 200, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, data

    def __enter__(self) -> "FakeHub":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class SilentHub:
    """A TCP port that accepts connections and never answers: a hub behind a black-holing network."""

    def __enter__(self) -> "SilentHub":
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)  # connections complete in the kernel's backlog; nobody ever reads them
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self.socket.close()
