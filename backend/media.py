"""Fetch a task's image bytes the way Label Studio stores them, without becoming an open proxy.

| task.data value                          | read from                                                     |
|------------------------------------------|---------------------------------------------------------------|
| /data/local-files/?d=<rel>               | LOCAL_FILES_DOCUMENT_ROOT/<rel> on disk (confined), else LS    |
| /data/upload/<pid>/<file>, upload/...    | {LS}/storage-data/uploaded/?filepath=..., then {LS}/data/upload |
| s3:// gs:// azure-blob://                | {LS}/tasks/<id>/presign/?fileuri=<urlsafe b64>, redirect followed |
| http(s)://<LS host or allowlisted host>  | direct GET (LS auth only to the LS host), redirects re-checked |

Anything else (other hosts, file://, data:, bare paths) is refused, so a task URL cannot make the backend
call arbitrary addresses (SSRF).
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urljoin, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from backend.config import Settings
from backend.ls_auth import AuthError, LabelStudioAuth

CLOUD_SCHEMES = ("s3", "gs", "azure-blob")
MAX_REDIRECTS = 5


class MediaError(ValueError):
    """A task's image cannot be resolved, is refused, or is too large; the message names the task and URL."""


class _NotServed(MediaError):
    """Label Studio answered with a non-200 status (so another route to the file may still work)."""


def _port(parts) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def _redact(url: str) -> str:
    """Return `url` without its query string (it may hold signed credentials) for messages and logs."""
    parts = urlsplit(url)
    if parts.path.startswith("/data/local-files"):
        return url  # the query is the file path, which the user needs to see
    return url.split("?", 1)[0] + ("?…" if parts.query else "")


class MediaResolver:
    """Turns `task["data"][key]` into image bytes. Thread-safe; share one per process."""

    def __init__(self, settings: Settings, auth: LabelStudioAuth, client: httpx.Client):
        self.settings = settings
        self.auth = auth
        self.client = client
        self.ls_url = settings.label_studio_url or ""
        self._ls = urlsplit(self.ls_url) if self.ls_url else None
        root = settings.local_files_document_root
        self.document_root = Path(root).resolve() if root else None

    # -- public -------------------------------------------------------------------------------------------------
    @staticmethod
    def media_url(task: dict[str, Any], key: str) -> str:
        """Return the media reference in `task["data"][key]`; raises MediaError when it is missing."""
        data = task.get("data") if isinstance(task, dict) else None
        value = data.get(key) if isinstance(data, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise MediaError(f"task {task.get('id') if isinstance(task, dict) else '?'}: data has no image URL "
                             f"under key {key!r}")
        return value.strip()

    def fetch(self, url: str, task_id: int | None = None) -> bytes:
        """Return the bytes behind `url`, checked against the size limits; raises MediaError."""
        where = f"task {task_id}: {_redact(url)}" if task_id is not None else _redact(url)
        try:
            data = self._fetch(url, task_id)
        except (httpx.HTTPError, AuthError) as exc:
            raise MediaError(f"{where}: download failed ({type(exc).__name__}: {exc})") from None
        except MediaError as exc:
            raise MediaError(f"{where}: {exc}") from None
        self._check_pixels(data, where)
        return data

    # -- kinds ----------------------------------------------------------------------------------------------------
    def task_sources(self, tasks: list[dict[str, Any]], data_key: str
                     ) -> tuple[list[int | None], list[str | None], dict[int, str]]:
        """Return (task ids, media URLs, row -> error) for `task["data"][data_key]` of each task."""
        ids: list[int | None] = [None] * len(tasks)
        urls: list[str | None] = [None] * len(tasks)
        errors: dict[int, str] = {}
        for i, task in enumerate(tasks):
            try:
                ids[i] = int(task["id"]) if task.get("id") is not None else None
            except (TypeError, ValueError):
                ids[i] = None
            try:
                urls[i] = self.media_url(task, data_key)
            except MediaError as exc:
                errors[i] = str(exc)
        return ids, urls, errors

    def _fetch(self, url: str, task_id: int | None) -> bytes:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in CLOUD_SCHEMES:
            return self._presigned(url, task_id)
        if scheme in ("http", "https"):
            if self._is_ls_host(parts) and parts.path.startswith("/data/local-files"):
                return self._local_file(parts, url)
            if self._is_ls_host(parts) and parts.path.startswith("/data/upload/"):
                return self._upload(parts.path[len("/data/"):])
            return self._http(url)
        if scheme == "" and not parts.netloc:
            if parts.path.startswith("/data/local-files"):
                return self._local_file(parts, url)
            if parts.path.startswith("/data/upload/"):
                return self._upload(parts.path[len("/data/"):])
            if parts.path.startswith("upload/"):
                return self._upload(parts.path)
        raise MediaError("unsupported image URL: use /data/local-files/, /data/upload/, s3://, gs://, "
                         "azure-blob://, or http(s) on the Label Studio host or LABELLOOP_URL_ALLOWLIST")

    def _local_file(self, parts, url: str) -> bytes:
        rel = parse_qs(parts.query).get("d", [""])[0]
        if not rel:
            raise MediaError("local-files URL without ?d=<path>")
        if self.document_root is None:
            if not self.ls_url:
                raise MediaError("local-files URL but neither LOCAL_FILES_DOCUMENT_ROOT nor LABEL_STUDIO_URL is set")
            return self._get_from_ls(f"{self.ls_url}/data/local-files/?d={quote(rel)}")
        candidate = self.document_root / unquote(rel).lstrip("/")
        try:
            # resolve() follows symlinks, so a link pointing outside the root is caught as well as '../'.
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            raise MediaError(f"local file {rel!r} not found under LOCAL_FILES_DOCUMENT_ROOT {self.document_root} "
                             "(is it the root Label Studio serves /data/local-files/ from?)") from None
        if not resolved.is_relative_to(self.document_root):
            raise MediaError(f"local file {rel!r} is outside LOCAL_FILES_DOCUMENT_ROOT {self.document_root}; refused")
        if not resolved.is_file():
            raise MediaError(f"local file {rel!r} is not a regular file")
        size = resolved.stat().st_size
        if size > self.settings.max_image_bytes:
            raise MediaError(f"{size} bytes exceeds the {self.settings.max_image_bytes}-byte image limit")
        with open(resolved, "rb") as fh:
            return fh.read(self.settings.max_image_bytes + 1)

    def _upload(self, filepath: str) -> bytes:
        if not self.ls_url:
            raise MediaError("uploaded file but LABEL_STUDIO_URL is not set")
        filepath = filepath.lstrip("/")
        try:
            return self._get_from_ls(f"{self.ls_url}/storage-data/uploaded/?filepath={quote(filepath)}")
        except _NotServed:
            # Older Label Studio versions serve uploads directly under /data/.
            return self._get_from_ls(f"{self.ls_url}/data/{quote(filepath)}")

    def _presigned(self, uri: str, task_id: int | None) -> bytes:
        if not self.ls_url:
            raise MediaError("cloud-storage URL but LABEL_STUDIO_URL is not set (needed to presign it)")
        if task_id is None:
            raise MediaError("cloud-storage URL without a task id (needed to presign it)")
        fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
        # Label Studio answers with a redirect to the signed storage URL; it vouches for that target.
        return self._get_from_ls(f"{self.ls_url}/tasks/{int(task_id)}/presign/?fileuri={fileuri}",
                                 follow_redirects=True)

    def _http(self, url: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if not parts.hostname or not (self._is_ls_host(parts) or self._allowlisted(parts)):
                raise MediaError(f"host {parts.hostname!r} is neither the Label Studio host nor in "
                                 "LABELLOOP_URL_ALLOWLIST; refused")
            # self.auth (LabelStudioAuth, given to every download) signs requests to the Label Studio host only.
            status, location, body = self._download(url, follow_redirects=False)
            if status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                continue
            if status != 200:
                raise MediaError(f"HTTP {status}")
            return body
        raise MediaError(f"more than {MAX_REDIRECTS} redirects")

    # -- helpers --------------------------------------------------------------------------------------------------
    def _get_from_ls(self, url: str, follow_redirects: bool = False) -> bytes:
        try:
            status, _, body = self._download(url, follow_redirects)
        except httpx.TransportError as exc:  # down, restarting, unreachable: say who, not only the socket error
            raise MediaError(f"Label Studio at {self.ls_url} is unreachable ({type(exc).__name__}: {exc}); the "
                             "image is fetched when it answers again") from None
        if status != 200:
            raise _NotServed(f"Label Studio answered HTTP {status} for {_redact(url)}")
        return body

    def _download(self, url: str, follow_redirects: bool) -> tuple[int, str | None, bytes]:
        """Return (status, Location header, body) reading at most max_image_bytes; raises MediaError if larger.
        Authentication, and a PAT's refresh after a 401, is `self.auth`'s (backend.ls_auth)."""
        limit = self.settings.max_image_bytes
        with self.client.stream("GET", url, auth=self.auth, follow_redirects=follow_redirects,
                                timeout=self.settings.fetch_timeout_seconds) as resp:
            if resp.status_code != 200:
                return resp.status_code, resp.headers.get("location"), b""
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise MediaError(f"{declared} bytes exceeds the {limit}-byte image limit")
            buf = bytearray()
            for chunk in resp.iter_bytes():
                buf.extend(chunk)
                if len(buf) > limit:
                    raise MediaError(f"more than the {limit}-byte image limit")
            return 200, None, bytes(buf)

    def _is_ls_host(self, parts) -> bool:
        ls = self._ls
        return bool(ls and parts.hostname and parts.hostname.lower() == (ls.hostname or "").lower()
                    and _port(parts) == _port(ls))

    def _allowlisted(self, parts) -> bool:
        host = (parts.hostname or "").lower()
        for entry in self.settings.url_allowlist:
            entry = entry.split("://", 1)[-1].strip("/")
            name, _, port = entry.partition(":")
            if port and (not port.isdigit() or int(port) != _port(parts)):
                continue
            if name.startswith("*.") and host.endswith(name[1:]):
                return True
            if host == name:
                return True
        return False

    def _check_pixels(self, data: bytes, where: str) -> None:
        """Refuse decompression bombs from the header alone, before anything decodes the pixels."""
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except Image.DecompressionBombError as exc:
            raise MediaError(f"{where}: refused as a decompression bomb ({exc})") from None
        except UnidentifiedImageError:
            raise MediaError(f"{where}: not a readable image (no image format Pillow knows)") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise MediaError(f"{where}: not a readable image ({exc})") from None
        if width * height > self.settings.max_image_pixels:
            raise MediaError(f"{where}: {width}x{height} exceeds the {self.settings.max_image_pixels}-pixel limit")
