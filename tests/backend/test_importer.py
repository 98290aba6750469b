"""`labelloop import`: argument and error handling in process (the real Label Studio run is in tests/e2e)."""
from __future__ import annotations

import re

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from typer.testing import CliRunner

from backend.importer import ImportFailed, check_under_root, image_files, import_folder, label_config
from labelers.formats.label_studio import LOCAL_FILES_ROOT_ENV
from labelloop.cli import app
from tests.backend.conftest import png
from tests.backend.fakes import ServerThread
from tests.e2e.label_studio_server import free_port


@pytest.fixture
def images(tmp_path):
    """<tmp>/root/cats with two images, a note and a subfolder image; returns the folder."""
    folder = tmp_path / "root" / "cats"
    (folder / "more").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(png())
    (folder / "B.PNG").write_bytes(png(seed=1))
    (folder / "notes.txt").write_text("not an image")
    (folder / "more" / "c.png").write_bytes(png(seed=2))
    return folder


def run(*args: str, env: dict | None = None):
    """Run `labelloop import ...` in process with none of the shell's Label Studio variables."""
    clean = {name: None for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST", "LABEL_STUDIO_API_KEY", "VERIFY_SSL",
                                   *LOCAL_FILES_ROOT_ENV)}
    clean.update(env or {})
    return CliRunner().invoke(app, ["import", *args], env=clean)


def test_image_files_follow_label_studios_filter(images):
    assert [p.name for p in image_files(images, recursive=False)] == ["B.PNG", "a.jpg"]
    assert [p.name for p in image_files(images, recursive=True)] == ["B.PNG", "a.jpg", "c.png"]
    empty = images / "more" / "empty"
    empty.mkdir()
    (empty / "x.txt").write_text("")
    with pytest.raises(ImportFailed, match="no image files .* in .*empty; use --recursive"):
        image_files(empty, recursive=False)
    with pytest.raises(ImportFailed, match="is not a folder"):
        image_files(images / "a.jpg", recursive=False)


def test_folder_outside_the_document_root_names_both_paths(images, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(ImportFailed) as info:
        check_under_root(images, other)
    assert str(images) in str(info.value) and str(other) in str(info.value)
    with pytest.raises(ImportFailed, match="not inside"):  # Label Studio refuses the root itself too
        check_under_root(images.parent, images.parent)
    check_under_root(images, images.parent)  # a subfolder is fine


def test_labels_become_a_single_choice_config_and_bad_labels_are_refused(tmp_path):
    xml = label_config("cat, dog ,a&b", None)
    assert re.findall(r'<Choice value="([^"]*)"/>', xml) == ["cat", "dog", "a&amp;b"]
    assert '<Image name="image" value="$image"/>' in xml
    for bad in ("cat", "cat,cat", " , "):
        with pytest.raises(ImportFailed, match="at least two different"):
            label_config(bad, None)
    config = tmp_path / "config.xml"
    config.write_text("<View/>")
    assert label_config(None, config) == "<View/>"
    with pytest.raises(ImportFailed, match="not both"):
        label_config("a,b", config)
    with pytest.raises(ImportFailed, match="cannot read --label-config"):
        label_config(None, tmp_path / "missing.xml")
    assert label_config(None, None) is None


def test_cli_refuses_bad_arguments_before_calling_label_studio(images, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: any request would be a ConnectError
    both = run(str(images), "--project", "1", "--new-project", "x", "--url", url, "--api-key", "k")
    assert both.exit_code == 2 and "exactly one of --project ID or --new-project NAME" in both.output
    neither = run(str(images), "--url", url, "--api-key", "k")
    assert neither.exit_code == 2 and "exactly one of" in neither.output
    no_url = run(str(images), "--project", "1", "--api-key", "k")
    assert no_url.exit_code == 2 and "LABEL_STUDIO_URL" in no_url.output
    no_key = run(str(images), "--project", "1", "--url", url)
    assert no_key.exit_code == 2 and "LABEL_STUDIO_API_KEY" in no_key.output
    bad_scheme = run(str(images), "--project", "1", "--url", "localhost:8080", "--api-key", "k")
    assert bad_scheme.exit_code == 2 and "must start with http://" in bad_scheme.output
    missing = run(str(tmp_path / "nope"), "--project", "1", "--url", url, "--api-key", "k")
    assert missing.exit_code == 2 and "is not a folder" in missing.output
    outside = tmp_path / "ls-root"
    outside.mkdir()
    refused = run(str(images), "--project", "1", "--url", url, "--api-key", "k",
                  env={"LOCAL_FILES_DOCUMENT_ROOT": str(outside)})  # the backend's env name is honoured
    assert refused.exit_code == 2
    assert str(images) in refused.output and str(outside) in refused.output


def test_unreachable_label_studio_is_named(images):
    url = f"http://127.0.0.1:{free_port()}"
    result = run(str(images), "--project", "1", "--url", url, "--api-key", "k")
    assert result.exit_code == 2
    assert f"cannot reach Label Studio at {url}" in result.output and "Traceback" not in result.output


def fake_label_studio(status: int):
    """A server answering whoami with `status` (401: wrong key) or a non-JSON 200 page (not Label Studio)."""
    fake = FastAPI()
    seen = []

    @fake.get("/api/current-user/whoami")
    def whoami(request: Request):
        seen.append(request.headers.get("authorization"))
        if status == 200:
            return PlainTextResponse("<html>some other app</html>")
        return JSONResponse({"detail": "Invalid token."}, status_code=status)

    return fake, seen


@pytest.mark.parametrize("status, message", [(401, "refused the API key (HTTP 401)"),
                                             (200, "did not answer like Label Studio")])
def test_wrong_key_or_wrong_server_is_a_clear_error(images, status, message):
    fake, seen = fake_label_studio(status)
    with ServerThread(fake) as server:
        result = run(str(images), "--new-project", "cats", "--labels", "cat,dog", "--url", server.url,
                     "--api-key", "wrong-key-123")
    assert result.exit_code == 2, result.output
    assert message in result.output and server.url in result.output
    assert "wrong-key-123" not in result.output  # the key is never echoed
    assert seen == ["Token wrong-key-123"]


def test_new_project_without_classes_is_refused_after_login(images, monkeypatch):
    class Projects:
        def list(self, title):
            return []

    class Client:
        projects = Projects()

    monkeypatch.setattr("backend.importer.connect", lambda url, key, verify: Client())
    with pytest.raises(ImportFailed, match="--new-project needs the classes"):
        import_folder(images, url="http://ls", api_key="k", new_project="cats")


class FakeSyncClient:
    """Just enough of the SDK for `sync`: a sync call that creates tasks one by one while it runs."""

    def __init__(self, created: int, status: str = "completed", traceback: str | None = None):
        import threading
        from types import SimpleNamespace

        self.count, self.created, self.status, self.traceback = 5, created, status, traceback
        self.step = threading.Event()
        self.projects = SimpleNamespace(get=lambda id: SimpleNamespace(task_number=self.count))
        self.import_storage = SimpleNamespace(local=SimpleNamespace(sync=self._sync))

    def _sync(self, id, request_options):
        for _ in range(self.created):
            self.count += 1
            self.step.wait(0.02)  # give the poller a chance to see each task
        return {"id": id, "status": self.status, "traceback": self.traceback, "last_sync_count": self.created,
                "meta": {"tasks_existed": 7}}


def test_sync_reports_progress_and_counts():
    from backend.importer import sync

    client = FakeSyncClient(created=20)
    seen = []
    assert sync(client, 1, 9, progress=seen.append, poll_seconds=0.01) == (20, 7)
    assert seen[-1] == 20 and seen == sorted(seen) and len(set(seen)) > 2  # it moved while syncing


def test_a_failed_sync_is_an_error_with_label_studios_reason():
    from backend.importer import sync

    client = FakeSyncClient(created=0, status="failed", traceback="Traceback ...\nValueError: cannot read x.jpg")
    with pytest.raises(ImportFailed, match="could not sync storage 9: ValueError: cannot read x.jpg"):
        sync(client, 1, 9, poll_seconds=0.01)
