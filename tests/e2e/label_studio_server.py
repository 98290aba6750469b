"""Real processes for the end-to-end tests: a headless Label Studio server and `labelloop serve`.

Label Studio runs from its own virtualenv (it pins many packages): `make setup-ls` builds it, and
`make test` passes its binary in LABEL_STUDIO_BIN. Without it the e2e tests fail with a message saying
so (never skip: CI must run them). Everything listens on loopback only, on free ports, with state in a
temporary folder, and each process is stopped by its own PID (process group) at teardown.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import httpx

REPO = Path(__file__).resolve().parents[2]
LS_BIN_ENV = "LABEL_STUDIO_BIN"
LS_BOOT_TIMEOUT = 240.0  # first boot runs every migration: ~30 s here, more on a loaded CI machine
BACKEND_BOOT_TIMEOUT = 120.0


class ProcessFailed(RuntimeError):
    """A helper process exited or never became healthy; the message carries the tail of its log."""


def label_studio_bin() -> Path:
    """Return the `label-studio` executable: $LABEL_STUDIO_BIN, else <repo>/.venv-ls/bin/label-studio.

    Raises FileNotFoundError (with the command that installs it) when neither exists.
    """
    configured = os.environ.get(LS_BIN_ENV)
    path = Path(configured) if configured else REPO / ".venv-ls" / "bin" / "label-studio"
    if not path.is_file():
        raise FileNotFoundError(
            f"Label Studio not found at {path} ({'from $' + LS_BIN_ENV if configured else 'default location'}). "
            "The end-to-end tests need a real Label Studio server: run `make setup-ls` "
            f"(installs label-studio into .venv-ls), or point {LS_BIN_ENV} at a label-studio executable.")
    return path


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class ManagedProcess:
    """A child process started in its own process group, logging to `log_path`."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop the process group of this child (SIGTERM, then SIGKILL); returns the exit code."""
        if self.alive():
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        else:  # the leader is gone; make sure nothing it started lingers
            _signal_group(self.pid, signal.SIGKILL)
        return self.popen.returncode

    def kill(self) -> int | None:
        """SIGKILL the process group at once (a crash, not a shutdown); returns the exit code."""
        _signal_group(self.pid, signal.SIGKILL)
        self.popen.wait(10)
        return self.popen.returncode


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the child is a session leader, so its group id is its pid
    except (ProcessLookupError, PermissionError):
        pass


def spawn(name: str, args: list[str], env: Mapping[str, str], log_path: Path,
          cwd: Path | None = None) -> ManagedProcess:
    """Start `args` in a new session with `env`, stdout+stderr to `log_path`; returns the handle."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(args, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=str(cwd) if cwd else None,
                                 start_new_session=True)
    return ManagedProcess(name, popen, log_path)


def wait_healthy(process: ManagedProcess, url: str, timeout: float,
                 ok: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
                 headers: Mapping[str, str] | None = None) -> float:
    """Poll GET `url` until `ok(response)`; returns the seconds waited.

    Raises ProcessFailed when the process exits first or `timeout` passes (message: its log tail).
    """
    started = time.monotonic()
    while True:
        if not process.alive():
            raise ProcessFailed(f"{process.name} exited with code {process.popen.returncode} before {url} "
                                f"answered; log {process.log_path}:\n{process.log_tail()}")
        try:
            response = httpx.get(url, timeout=2.0, headers=dict(headers or {}))
            if ok(response):
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > timeout:
            raise ProcessFailed(f"{process.name} did not answer {url} within {timeout:.0f} s; "
                                f"log {process.log_path}:\n{process.log_tail()}")
        time.sleep(0.5)


def _clean_env() -> dict[str, str]:
    """Our environment minus variables that would leak into a child's configuration."""
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(("LABEL_STUDIO_", "LABELLOOP_", "DJANGO_", "VIRTUAL_ENV", "PYTHONPATH")) or name in (
                "MODEL_DIR", "PORT", "HOST", "WORKERS", "THREADS", "BASIC_AUTH_USER", "BASIC_AUTH_PASS",
                "LOCAL_FILES_DOCUMENT_ROOT", "LOG_LEVEL"):
            del env[name]
    return env


@dataclass
class LabelStudioServer:
    """A running headless Label Studio: `url`, admin `token` (legacy API token), local-files `files_root`."""

    url: str
    token: str
    username: str
    password: str
    data_dir: Path
    files_root: Path
    process: ManagedProcess
    boot_seconds: float = 0.0

    def client(self):
        """Return a `label_studio_sdk.client.LabelStudio` logged in with the admin token."""
        from label_studio_sdk.client import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.token, timeout=120.0)

    def stop(self) -> None:
        self.process.stop()


def start_label_studio(workdir: Path, binary: Path | None = None) -> LabelStudioServer:
    """Start Label Studio headless on a free loopback port with a fresh data dir under `workdir`.

    Legacy API tokens are enabled with a random test token (set before the first start, when the
    organization is created), local files are served from `<workdir>/files`, and calls to 127.0.0.1 (the
    ML backend and its webhook) are allowed. Returns once GET /health answers 200; raises
    FileNotFoundError when Label Studio is not installed and ProcessFailed when it does not come up.
    """
    binary = binary or label_studio_bin()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir, files_root = workdir / "ls-data", workdir / "files"
    data_dir.mkdir(parents=True, exist_ok=True)
    files_root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)  # 32 chars: within LS's 6..40 legacy-token limits
    username, password = "e2e@labelloop.test", secrets.token_urlsafe(12)
    env = _clean_env()
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_HOST": url,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
        "ML_BLOCK_LOCAL_IP": "false",  # else LS refuses to call a backend on 127.0.0.1
        "SSRF_PROTECTION_ENABLED": "false",  # else the webhook to 127.0.0.1 is blocked
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "COLLECT_ANALYTICS": "false",
        "HOME": str(workdir),  # LS writes a few files under ~/.local/share; keep them in the temp dir
    })
    args = [str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
            f"--data-dir={data_dir}", "--enable-legacy-api-token", f"--username={username}",
            f"--password={password}", f"--user-token={token}", "--log-level=WARNING"]  # "=": values may start with "-"
    process = spawn("label-studio", args, env, workdir / "logs" / "label-studio.log", cwd=workdir)
    try:
        boot = wait_healthy(process, f"{url}/health", LS_BOOT_TIMEOUT)
        _check_token(url, token, process)
    except BaseException:
        process.stop()
        raise
    return LabelStudioServer(url, token, username, password, data_dir, files_root, process, boot)


def _check_token(url: str, token: str, process: ManagedProcess) -> None:
    """Fail early and clearly when the legacy token is not accepted (e.g. a reused data dir)."""
    response = httpx.get(f"{url}/api/projects/", headers={"Authorization": f"Token {token}"}, timeout=30.0)
    if response.status_code != 200:
        raise ProcessFailed(f"Label Studio at {url} refused the test token: HTTP {response.status_code} "
                            f"{response.text[:300]}\nlog {process.log_path}:\n{process.log_tail()}")


@dataclass
class BackendServer:
    """A running `labelloop serve`: its `url`, `model_dir` and the environment it was started with."""

    url: str
    model_dir: Path
    env: dict[str, str]
    process: ManagedProcess
    boot_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30.0, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, timeout=120.0, **kwargs)

    def stop(self) -> int | None:
        return self.process.stop()

    def kill(self) -> int | None:
        return self.process.kill()


def backend_env(ls: LabelStudioServer | None, model_dir: Path, port: int, embedder: str,
                extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment for `labelloop serve` talking to `ls` (None: standalone)."""
    env = _clean_env()
    env.update({
        "MODEL_DIR": str(model_dir),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": "1",
        "LOG_LEVEL": "INFO",
        "LABELLOOP_EMBEDDER": embedder,
        "LABELLOOP_CACHE": str(model_dir.parent / "labelloop-cache"),
        "OMP_NUM_THREADS": "1",  # the CI machine is shared; a 64 px embedder needs no more
    })
    if ls is not None:
        env.update({"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token,
                    "LOCAL_FILES_DOCUMENT_ROOT": str(ls.files_root)})
    env.update(extra or {})
    return env


def start_backend(ls: LabelStudioServer | None, model_dir: Path, *, embedder: str = "efficientnet-lite0@64",
                  port: int | None = None, extra_env: Mapping[str, str] | None = None,
                  launcher: list[str] | None = None, log_name: str = "backend.log") -> BackendServer:
    """Start `labelloop serve` as a real subprocess of this test's Python and wait for GET /health.

    `launcher` replaces `python -m labelloop.cli` (the fault-injection tests start the same CLI through a
    wrapper). Returns once /health answers 200 *and* the embedder is loaded, so timings that follow measure
    serving, not start-up. Raises ProcessFailed with the log tail when it exits or never becomes healthy.
    """
    port = port or free_port()
    model_dir.mkdir(parents=True, exist_ok=True)
    env = backend_env(ls, model_dir, port, embedder, extra_env)
    args = (launcher or [sys.executable, "-m", "labelloop.cli"]) + ["serve"]
    process = spawn("labelloop serve", args, env, model_dir.parent / "logs" / log_name, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        boot = wait_healthy(process, f"{url}/health", BACKEND_BOOT_TIMEOUT, ok=_embedder_ready)
    except BaseException:
        process.stop()
        raise
    return BackendServer(url, model_dir, env, process, boot)


def _embedder_ready(response: httpx.Response) -> bool:
    if response.status_code != 200:
        return False
    embedder = response.json().get("embedder") or {}
    if embedder.get("error"):
        raise ProcessFailed(f"the backend could not load its embedder: {embedder['error']}")
    return bool(embedder.get("loaded"))
