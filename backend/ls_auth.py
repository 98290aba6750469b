"""Authentication against Label Studio, the one auth stack for every call the backend makes to it.

`LABEL_STUDIO_API_KEY` is a legacy token (sent as `Token <key>`) or a Personal Access Token: a JWT refresh
token, exchanged at POST {LS}/api/token/refresh/ for a short-lived access token sent as `Bearer`. The access
token is refreshed shortly before it expires and again whenever Label Studio answers 401.

`LabelStudioAuth` is an `httpx.Auth`: the SDK client (backend.ls_client) and media downloads use it, so
there is one refresh, one cache and one place that notices a rejected key. A rejected key (401/403 that a
refresh cannot cure) is not transient: `rejected` says why, /health reports it, and the log says it once.

Recovery without a restart: while the key is refused, `recheck()` (called by /health) asks Label Studio again
at most every RECHECK_SECONDS, and at once when LABEL_STUDIO_API_KEY_FILE changed; the first answer that
accepts the key clears the state. So fixing the token on Label Studio's side (re-enabling legacy tokens, a
new token written into the key file) ends the degraded state; a key given only in LABEL_STUDIO_API_KEY is
fixed by changing it in the process's environment, which only a restart can do.
"""
from __future__ import annotations

import base64
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx

log = logging.getLogger(__name__)

# Refresh this many seconds before the access token's exp, so a request never leaves with a dying token.
REFRESH_MARGIN_SECONDS = 30.0
REJECTED_STATUSES = (401, 403)
RECHECK_SECONDS = 30.0  # while the key is refused, /health asks Label Studio again at most this often
PROBE_PATH = "/api/current-user/whoami"  # the cheapest call that needs a valid key


class AuthError(RuntimeError):
    """The API key was rejected or could not be exchanged; the message never contains the key."""


def jwt_claims(token: str) -> dict[str, Any] | None:
    """Return the (unverified) claims of a JWT, or None when `token` is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def is_personal_access_token(key: str) -> bool:
    """True for a Label Studio PAT: a JWT whose token_type is "refresh" (legacy tokens are <= 40 chars)."""
    claims = jwt_claims(key)
    return bool(claims and claims.get("token_type") == "refresh")


class LabelStudioAuth(httpx.Auth):
    """Builds the Authorization header for Label Studio requests and notices a rejected key; thread-safe."""

    def __init__(self, base_url: str | None, api_key: str | None, client: httpx.Client,
                 key_file: Path | None = None, on_new_key: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.base_url = (base_url or "").rstrip("/")
        self.api_key = api_key or None
        self._client = client
        self._lock = threading.Lock()
        self._access: str | None = None
        self._access_exp: float = 0.0
        self.rejected: str | None = None  # why Label Studio refuses the key; None while it has not
        self.key_file, self._key_stamp = (Path(key_file) if key_file else None), None
        self._on_new_key = on_new_key or (lambda key: None)  # e.g. the log redactor learning the new secret
        self._clock, self._checked_at = clock, float("-inf")
        if self.key_file is not None:
            self.reload_key()

    def reload_key(self) -> bool:
        """Re-read LABEL_STUDIO_API_KEY_FILE when it changed (size or mtime); returns True for a new key.

        Raises AuthError naming the file when it cannot be read or is empty (a clear error, not a silent
        fallback to the old key)."""
        if self.key_file is None:
            return False
        try:
            stat = self.key_file.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._key_stamp:
                return False
            key = self.key_file.read_text().strip()
        except OSError as exc:
            raise AuthError(f"cannot read LABEL_STUDIO_API_KEY_FILE {self.key_file}: {exc.strerror}") from None
        if not key:
            raise AuthError(f"LABEL_STUDIO_API_KEY_FILE {self.key_file} is empty")
        with self._lock:
            self._key_stamp = stamp
            changed = key != self.api_key
            self.api_key = key
            if changed:
                self._access, self._access_exp = None, 0.0
                self._checked_at = float("-inf")  # ask Label Studio about the new key at the next recheck
        if changed:
            self._on_new_key(key)
            log.info("LABEL_STUDIO_API_KEY_FILE %s: using the new key", self.key_file)
        return changed

    def recheck(self) -> str | None:
        """While the key is refused, ask Label Studio again (at most every RECHECK_SECONDS, at once after the
        key file changed); returns `rejected` afterwards (None: the key works again)."""
        if self.rejected is None or not self.configured:
            return self.rejected
        try:
            self.reload_key()
        except AuthError as exc:
            self.rejected = str(exc)
            return self.rejected
        with self._lock:
            if self._clock() - self._checked_at < RECHECK_SECONDS:
                return self.rejected
            self._checked_at = self._clock()
        first = self.rejected  # names the call that was refused first: the probe's own refusal says less
        try:  # goes through auth_flow, which clears `rejected` on success
            self._client.get(f"{self.base_url}{PROBE_PATH}", timeout=5.0)
        except (httpx.HTTPError, AuthError) as exc:
            log.info("re-checking LABEL_STUDIO_API_KEY: Label Studio not reachable (%s)", type(exc).__name__)
        with self._lock:
            if self.rejected is not None:
                self.rejected = first
        return self.rejected

    @property
    def configured(self) -> bool:
        return bool(self.base_url and self.api_key)

    @property
    def kind(self) -> str:
        """"none", "legacy-token" or "personal-access-token"."""
        if not self.api_key:
            return "none"
        return "personal-access-token" if is_personal_access_token(self.api_key) else "legacy-token"

    def headers(self) -> dict[str, str]:
        """Return the Authorization header to send to Label Studio ({} when no key is configured)."""
        if not self.api_key:
            return {}
        if self.kind == "legacy-token":
            return {"Authorization": f"Token {self.api_key}"}
        return {"Authorization": f"Bearer {self._access_token()}"}

    def invalidate(self) -> None:
        """Forget the access token (call after a 401) so the next request refreshes it."""
        with self._lock:
            self._access, self._access_exp = None, 0.0

    def auth_flow(self, request: httpx.Request):
        """httpx.Auth: sign requests to the Label Studio host (only), refresh a PAT once on 401, and record a
        final 401/403 as a rejected key."""
        if not self._is_ls(request.url):
            yield request
            return
        self.reload_key()
        request.headers.update(self.headers())
        response = yield request
        if response.status_code == 401 and self.kind == "personal-access-token":
            self.invalidate()
            request.headers.update(self.headers())
            response = yield request
        if response.status_code in REJECTED_STATUSES:
            self._reject(f"Label Studio refused LABEL_STUDIO_API_KEY ({self.kind}): HTTP {response.status_code} "
                         f"on {request.method} {request.url.path}")
        elif response.is_success and self.rejected:
            log.warning("Label Studio accepts LABEL_STUDIO_API_KEY again")
            self.rejected = None

    def _reject(self, reason: str) -> None:
        with self._lock:
            first = self.rejected is None
            self.rejected = reason
        if first:
            log.warning("%s; check the key (Label Studio: Account & Settings > Access Token). Calls that need it "
                        "are not retried as if the failure were transient.", reason)

    def _is_ls(self, url: httpx.URL) -> bool:
        if not self.base_url:
            return False
        ls = httpx.URL(self.base_url)
        return (url.host or "").lower() == (ls.host or "").lower() and _port(url) == _port(ls)

    def _access_token(self) -> str:
        with self._lock:
            if self._access and time.time() < self._access_exp - REFRESH_MARGIN_SECONDS:
                return self._access
            if not self.base_url:
                raise AuthError("a personal access token needs LABEL_STUDIO_URL to be exchanged")
            try:
                # auth=None: the refresh call itself must not go through this auth flow
                resp = self._client.post(f"{self.base_url}/api/token/refresh/", json={"refresh": self.api_key},
                                         auth=None)
            except httpx.HTTPError as exc:
                raise AuthError(f"cannot reach Label Studio to refresh the access token ({type(exc).__name__})") \
                    from None
            if resp.status_code == 200:
                try:
                    access = resp.json()["access"]
                except (ValueError, KeyError, TypeError):
                    raise AuthError("Label Studio's token refresh answer has no 'access' token") from None
                claims = jwt_claims(access) or {}
                self._access = access
                self._access_exp = float(claims.get("exp", time.time() + 300))
                return access
        reason = f"Label Studio refused the personal access token (HTTP {resp.status_code} on token refresh)"
        if resp.status_code in (400, *REJECTED_STATUSES):
            self._reject(reason)
        raise AuthError(reason)


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)
