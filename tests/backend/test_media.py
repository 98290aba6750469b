"""Media resolution for every URL kind, Label Studio auth (legacy token and PAT), SSRF and size limits."""
from __future__ import annotations

import os

import httpx
import pytest

from backend.config import load_settings
from backend.ls_auth import LabelStudioAuth, is_personal_access_token
from backend.media import MediaError, MediaResolver
from tests.backend.conftest import png
from tests.backend.fakes import LEGACY_TOKEN, Canary, FakeLabelStudio, ServerThread, make_jwt

IMAGE = png((10, 200, 10))
OTHER = png((200, 10, 10))


@pytest.fixture
def servers():
    """A fake Label Studio and a canary host, both on loopback but on different ports (different origins)."""
    fake = FakeLabelStudio(image=IMAGE)
    canary = Canary(image=OTHER)
    with ServerThread(fake.app()) as ls, ServerThread(canary.app()) as can:
        fake.storage_redirect = can.url + "/bucket"
        yield fake, ls, canary, can


def resolver(tmp_path, ls_url=None, api_key=LEGACY_TOKEN, **overrides) -> MediaResolver:
    settings = load_settings(env={}, model_dir=tmp_path / "md", label_studio_url=ls_url, label_studio_api_key=api_key,
                             **overrides)
    client = httpx.Client()
    return MediaResolver(settings, LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key, client),
                         client)


# -- local files ------------------------------------------------------------------------------------------------
def test_local_files_are_read_from_the_document_root(tmp_path):
    root = tmp_path / "root"
    (root / "a b").mkdir(parents=True)
    (root / "a b" / "x.png").write_bytes(IMAGE)
    media = resolver(tmp_path, local_files_document_root=root)
    assert media.fetch("/data/local-files/?d=a%20b/x.png", 1) == IMAGE
    assert media.fetch("/data/local-files/?d=a b/x.png", 1) == IMAGE


def test_a_file_missing_under_the_document_root_names_the_root(tmp_path):
    # The usual cause is a root that differs from Label Studio's: the message must show which root was searched.
    root = tmp_path / "not-the-ls-root"
    root.mkdir()
    media = resolver(tmp_path, local_files_document_root=root)
    with pytest.raises(MediaError, match=f"'cats/1.png' not found under LOCAL_FILES_DOCUMENT_ROOT {root}"):
        media.fetch("/data/local-files/?d=cats/1.png", 3)


@pytest.mark.parametrize("rel", ["../secret.png", "a/../../secret.png", "/etc/passwd", "%2e%2e/secret.png",
                                 "link/secret.png"])
def test_local_files_cannot_escape_the_document_root(tmp_path, rel):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.png").write_bytes(IMAGE)
    (tmp_path / "secret.png").write_bytes(IMAGE)
    os.symlink(tmp_path / "outside", root / "link")  # a symlink inside the root pointing out of it
    media = resolver(tmp_path, local_files_document_root=root)
    with pytest.raises(MediaError) as info:
        media.fetch(f"/data/local-files/?d={rel}", 7)
    assert "task 7" in str(info.value)
    assert "outside LOCAL_FILES_DOCUMENT_ROOT" in str(info.value) or "not found" in str(info.value)


def test_local_files_over_http_when_no_document_root(tmp_path, servers):
    fake, ls, _, _ = servers
    fake.local_files["e2e/a.png"] = IMAGE
    media = resolver(tmp_path, ls.url)
    assert media.fetch("/data/local-files/?d=e2e/a.png", 1) == IMAGE
    assert fake.requests[-1]["authorization"] == f"Token {LEGACY_TOKEN}"


# -- uploads, presign, http --------------------------------------------------------------------------------------
def test_uploads_use_storage_data_then_fall_back(tmp_path, servers):
    fake, ls, _, _ = servers
    fake.uploads["upload/1/new.png"] = IMAGE
    fake.old_uploads["upload/1/old.png"] = OTHER
    media = resolver(tmp_path, ls.url)
    assert media.fetch("/data/upload/1/new.png", 1) == IMAGE
    assert media.fetch("upload/1/old.png", 2) == OTHER
    paths = [(r["path"], r["query"]) for r in fake.requests]
    assert ("/storage-data/uploaded/", "filepath=upload/1/new.png") in paths
    assert ("/data/upload/1/old.png", "") in paths


@pytest.mark.parametrize("uri", ["s3://bucket/dir/img.png", "gs://bucket/img.png", "azure-blob://container/img.png"])
def test_cloud_urls_go_through_the_presign_endpoint_without_leaking_auth(tmp_path, servers, uri):
    fake, ls, canary, _ = servers
    media = resolver(tmp_path, ls.url)
    assert media.fetch(uri, 42) == OTHER
    presign = [r for r in fake.requests if r["path"] == "/tasks/42/presign/"]
    assert len(presign) == 1 and presign[0]["authorization"] == f"Token {LEGACY_TOKEN}"
    assert canary.hits[-1]["path"].startswith("/bucket/")
    assert canary.hits[-1]["authorization"] is None  # LS credentials never go to the storage host


def test_cloud_url_needs_a_task_id(tmp_path, servers):
    _, ls, _, _ = servers
    with pytest.raises(MediaError, match="task id"):
        resolver(tmp_path, ls.url).fetch("s3://bucket/x.png", None)


def test_http_on_the_label_studio_host_is_fetched_with_auth(tmp_path, servers):
    fake, ls, _, _ = servers
    assert resolver(tmp_path, ls.url).fetch(f"{ls.url}/media/x.png", 1) == IMAGE
    assert fake.requests[-1]["authorization"] == f"Token {LEGACY_TOKEN}"


def test_other_hosts_are_refused_and_never_contacted(tmp_path, servers):
    _, ls, canary, can = servers
    media = resolver(tmp_path, ls.url)
    for url in (f"{can.url}/image.png", f"http://localhost:{can.port}/image.png", "file:///etc/passwd",
                "data:image/png;base64,AAAA", "ftp://example.org/x.png", "relative/path.png"):
        with pytest.raises(MediaError):
            media.fetch(url, 1)
    assert canary.hits == []  # the SSRF canary saw nothing


def test_allowlisted_hosts_are_fetched_without_ls_credentials(tmp_path, servers):
    _, ls, canary, can = servers
    media = resolver(tmp_path, ls.url, url_allowlist=f"127.0.0.1:{can.port}")
    assert media.fetch(f"{can.url}/image.png", 1) == OTHER
    assert canary.hits[-1]["authorization"] is None


def test_a_redirect_cannot_lead_outside_the_allowlist(tmp_path, servers):
    fake, ls, canary, can = servers
    # the allowlisted canary redirects to the Label Studio host's media: allowed (LS host), and one to
    # an address that is on neither list: refused before it is contacted.
    media = resolver(tmp_path, ls.url, url_allowlist=f"127.0.0.1:{can.port}")
    assert media.fetch(f"{can.url}/redirect?to={ls.url}/media/x.png", 1) == IMAGE
    with pytest.raises(MediaError, match="refused"):
        media.fetch(f"{can.url}/redirect?to=http://127.0.0.2:{can.port}/x.png", 1)
    assert not any(h["path"] == "/x.png" for h in canary.hits)


# -- auth ---------------------------------------------------------------------------------------------------------
def test_personal_access_token_is_exchanged_and_refreshed(tmp_path, servers):
    fake, ls, _, _ = servers
    fake.uploads["upload/1/a.png"] = IMAGE
    assert is_personal_access_token(fake.pat) and not is_personal_access_token(LEGACY_TOKEN)
    media = resolver(tmp_path, ls.url, api_key=fake.pat)
    assert media.fetch("/data/upload/1/a.png", 1) == IMAGE
    assert media.fetch("/data/upload/1/a.png", 1) == IMAGE
    assert fake.refreshes == 1  # the access token is reused while valid
    assert fake.requests[-1]["authorization"].startswith("Bearer ")
    fake.reject_next_bearer = True  # the server revokes it: a 401 triggers one refresh and a retry
    assert media.fetch("/data/upload/1/a.png", 1) == IMAGE
    assert fake.refreshes == 2


def test_access_token_is_refreshed_before_it_expires(tmp_path, servers):
    fake, ls, _, _ = servers
    fake.uploads["upload/1/a.png"] = IMAGE
    fake.access_ttl = 10.0  # inside the refresh margin: every request must refresh first
    media = resolver(tmp_path, ls.url, api_key=fake.pat)
    media.fetch("/data/upload/1/a.png", 1)
    media.fetch("/data/upload/1/a.png", 1)
    assert fake.refreshes == 2


def test_bad_personal_access_token_is_a_clear_error(tmp_path, servers):
    fake, ls, _, _ = servers
    bad = make_jwt({"token_type": "refresh", "exp": 9999999999, "jti": "other"})
    with pytest.raises(MediaError, match="refused the personal access token"):
        resolver(tmp_path, ls.url, api_key=bad).fetch("/data/upload/1/a.png", 1)


# -- limits -------------------------------------------------------------------------------------------------------
def test_images_over_the_byte_limit_are_refused(tmp_path, servers):
    fake, ls, _, _ = servers
    fake.uploads["upload/1/big.png"] = png(size=(256, 256), noise=100)
    root = tmp_path / "root"
    root.mkdir()
    (root / "big.png").write_bytes(fake.uploads["upload/1/big.png"])
    media = resolver(tmp_path, ls.url, max_image_bytes=10_000, local_files_document_root=root)
    for url in ("/data/upload/1/big.png", "/data/local-files/?d=big.png"):
        with pytest.raises(MediaError, match="byte image limit"):
            media.fetch(url, 1)


def test_decompression_bombs_are_refused_from_the_header(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "bomb.png").write_bytes(png(color=(0, 0, 0), size=(5000, 5000)))  # 25 Mpx, compresses to ~25 kB
    media = resolver(tmp_path, local_files_document_root=root, max_image_pixels=1_000_000)
    with pytest.raises(MediaError, match="pixel limit"):
        media.fetch("/data/local-files/?d=bomb.png", 3)


def test_missing_data_key_names_the_task_and_key():
    with pytest.raises(MediaError, match=r"task 5: data has no image URL under key 'image'"):
        MediaResolver.media_url({"id": 5, "data": {"img": "x"}}, "image")


def test_absolute_label_studio_urls_take_the_same_routes(tmp_path, servers):
    fake, ls, _, _ = servers
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.png").write_bytes(IMAGE)
    fake.uploads["upload/3/b.png"] = OTHER
    media = resolver(tmp_path, ls.url, local_files_document_root=root)
    assert media.fetch(f"{ls.url}/data/local-files/?d=a.png", 1) == IMAGE  # from disk, not over HTTP
    assert not any(r["path"] == "/data/local-files/" for r in fake.requests)
    assert media.fetch(f"{ls.url}/data/upload/3/b.png", 2) == OTHER
    assert fake.requests[-1]["path"] == "/storage-data/uploaded/"
