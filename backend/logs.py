"""What the backend says about failures, in logs and in /metrics: once where it would repeat, never a secret.

Label Studio's SDK puts the whole HTTP response (headers with `set-cookie: sessionid=...`, the body) into its
exception text, and httpx puts the URL (whose query may carry a signed token) into its own. So a failure is
described by `Redactor.error(exc)`: the exception's type, the HTTP status, Label Studio's short `detail`, and
any remaining text with URLs' query strings and the configured secrets removed.
"""
from __future__ import annotations

import logging
import re
import threading
from typing import Any, Iterable

_QUERY = re.compile(r"(https?://[^\s?'\"]+|/[^\s?'\"]*)\?[^\s'\"]*")
_HEADERS = re.compile(r"(?is)\b(headers?|set-cookie|cookie|authorization)\b.*")
_TOKENISH = re.compile(r"(?i)\b(token|sessionid|csrftoken|access|refresh|api[_-]?key|password|secret)"
                       r"(\s*[=:]\s*|\"\s*:\s*\"|'\s*:\s*')[^\s,;'\"}]+")
MAX_DETAIL = 200


class Redactor:
    """Turns exceptions and messages into text that is safe to log and to show in /metrics."""

    def __init__(self, secrets: Iterable[str | None] = ()):
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def add(self, secret: str | None) -> None:
        """Also remove `secret` from now on (e.g. a new key read from LABEL_STUDIO_API_KEY_FILE)."""
        self.secrets = sorted({*self.secrets, *([secret] if secret and len(secret) >= 4 else [])}, key=len,
                              reverse=True)

    def text(self, message: str) -> str:
        """Return `message` without configured secrets, URL query strings, headers or token-like pairs."""
        for secret in self.secrets:
            message = message.replace(secret, "***")
        message = _QUERY.sub(lambda m: m.group(1) + "?…", message)
        message = _HEADERS.sub(lambda m: m.group(1) + " (removed)", message)
        message = _TOKENISH.sub(lambda m: m.group(1) + m.group(2) + "***", message)
        return message[:MAX_DETAIL]

    def error(self, exc: BaseException) -> str:
        """Return "<Type>: HTTP <status>[: <detail>]" for HTTP errors, else "<Type>: <redacted message>"."""
        name = type(exc).__name__
        status = getattr(exc, "status_code", None)
        if status is None:
            response = getattr(exc, "response", None)
            status = getattr(response, "status_code", None)
        if status is not None:
            detail = _detail(getattr(exc, "body", None))
            return f"{name}: HTTP {status}" + (f": {self.text(detail)}" if detail else "")
        return f"{name}: {self.text(str(exc))}" if str(exc) else name


def _detail(body: Any) -> str | None:
    """Label Studio's human-readable reason from an error body, if it has one."""
    if isinstance(body, dict):
        detail = body.get("validation_errors") or body.get("detail")
        return str(detail) if detail else None
    return None


class OnceLog:
    """Logs each keyed message once per process (a misconfiguration is said once, not on every request)."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def warning(self, key: str, message: str, *args: Any) -> bool:
        """Log `message` at WARNING the first time `key` is seen; returns True when it was logged."""
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
        self.logger.warning(message, *args)
        return True


def quiet_http_loggers() -> None:
    """Keep httpx/httpcore below WARNING: at INFO httpx logs every URL (a presigned one carries its signature
    in the query), at DEBUG httpcore logs every response header (Label Studio's `set-cookie: sessionid=...`)."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
