"""`labelloop import`: turn a folder of images into Label Studio tasks, through a Local Storage connection.

Label Studio serves `/data/local-files/?d=<path>` only for files inside a Local Storage connection of the
project, so importing tasks without one gives 404 images in the browser. We therefore connect the folder
as Local Storage ("Files" mode: one task per image) and let Label Studio sync it. Label Studio records which
file each task came from, so syncing again (re-running this command, or *Sync Storage* in its UI) creates
tasks only for new files.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from labelers.formats.label_studio import LOCAL_FILES_ROOT_ENV

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
# Label Studio matches this against each file's name (re.match), so the case flag covers ".JPG" too.
IMAGE_REGEX = r"(?i).*\.(jpe?g|png|gif|bmp|webp|tiff?)$"
STORAGE_TITLE = "labelloop import"
SYNC_TIMEOUT_SECONDS = 6 * 3600.0  # one HTTP request syncs the whole folder in Label Studio Community


class ImportFailed(RuntimeError):
    """The folder could not be imported; the message says what to change. Nothing was half-imported."""


@dataclass
class ImportResult:
    """What one import did: the project, its storage connection, and the task counts."""

    project_id: int
    project_created: bool
    storage_id: int
    storage_created: bool
    files: int  # image files in the folder
    created: int  # new tasks
    existed: int  # files that already had a task from this storage


# -- local checks (no network) -------------------------------------------------------------------------------
def image_files(folder: Path, recursive: bool) -> list[Path]:
    """Return the image files Label Studio will turn into tasks (its own filter, applied here first).

    Raises ImportFailed when `folder` is not a directory or holds no image.
    """
    if not folder.is_dir():
        raise ImportFailed(f"{folder} is not a folder")
    pattern = re.compile(IMAGE_REGEX)
    files = sorted(p for p in (folder.rglob("*") if recursive else folder.glob("*"))
                   if p.is_file() and pattern.match(p.name))
    if not files:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        raise ImportFailed(f"no image files ({suffixes}) in {folder}"
                           + ("" if recursive else "; use --recursive to include subfolders"))
    return files


def check_under_root(folder: Path, root: Path) -> None:
    """Raise ImportFailed unless `folder` is strictly inside Label Studio's local-files `root`.

    Label Studio refuses a storage path outside its LOCAL_FILES_DOCUMENT_ROOT, and the root itself.
    """
    folder, root = folder.resolve(), root.resolve()
    if folder == root or root not in folder.parents:
        raise ImportFailed(
            f"the folder {folder} is not inside Label Studio's local-files document root {root}. Label Studio only "
            f"serves files from a subfolder of its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: move the images to "
            f"e.g. {root / folder.name}, or restart Label Studio with a document root that contains the folder.")


def label_config(labels: Optional[str], config_file: Optional[Path]) -> Optional[str]:
    """Return the label config XML from `--labels a,b,c` or `--label-config FILE` (None when neither is given).

    Raises ImportFailed for both at once, fewer than two labels, or an unreadable file.
    """
    if labels and config_file:
        raise ImportFailed("give either --labels or --label-config, not both")
    if config_file:
        try:
            return config_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ImportFailed(f"cannot read --label-config {config_file}: {exc.strerror or exc}") from None
    if labels is None:
        return None
    names = [name.strip() for name in labels.split(",") if name.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ImportFailed(f"--labels needs at least two different comma-separated names, got {labels!r}")
    from xml.sax.saxutils import quoteattr

    choices = "".join(f"<Choice value={quoteattr(name)}/>" for name in names)
    return ('<View>\n  <Image name="image" value="$image"/>\n'
            f'  <Choices name="label" toName="image" choice="single">{choices}</Choices>\n</View>')


# -- Label Studio ------------------------------------------------------------------------------------------------
def _as_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    return item.model_dump(mode="json") if hasattr(item, "model_dump") else dict(item)


def _api_detail(exc: Exception) -> str:
    """Return Label Studio's own words from an SDK ApiError (validation errors, detail), never headers."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        errors = body.get("validation_errors")
        if isinstance(errors, dict):
            return "; ".join(" ".join(map(str, v)) if isinstance(v, list) else str(v) for v in errors.values())
        if body.get("detail"):
            return str(body["detail"])
    return str(body)[:300] if body else type(exc).__name__


def connect(url: str, api_key: str, verify_ssl: bool = True):
    """Return a `label_studio_sdk` client for `url` after checking the key (GET /api/current-user/whoami).

    Raises ImportFailed naming the URL when Label Studio cannot be reached or refuses the key.
    """
    import httpx
    from label_studio_sdk.client import LabelStudio
    from label_studio_sdk.core.api_error import ApiError

    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ImportFailed(f"--url {url!r} must start with http:// or https://")
    client = LabelStudio(base_url=url, api_key=api_key,
                         httpx_client=httpx.Client(verify=verify_ssl, timeout=60.0))
    try:
        client.users.whoami()
    except ApiError as exc:
        if exc.status_code in (401, 403):
            raise ImportFailed(f"Label Studio at {url} refused the API key (HTTP {exc.status_code}). Copy it from "
                               "Account & Settings > Personal Access Token (or Access Token when legacy tokens "
                               "are enabled) and pass it as --api-key or LABEL_STUDIO_API_KEY.") from None
        if exc.status_code == 200:  # the SDK could not parse a 200: another server on that port
            raise ImportFailed(f"{url} did not answer like Label Studio (not its JSON); check --url") from None
        raise ImportFailed(f"Label Studio at {url} answered HTTP {exc.status_code}: {_api_detail(exc)}") from None
    except httpx.HTTPError as exc:
        raise ImportFailed(f"cannot reach Label Studio at {url} ({type(exc).__name__}); is it running, and is "
                           "--url (or LABEL_STUDIO_URL) its address?") from None
    except ValueError as exc:  # a 200 that is not Label Studio's JSON: another server on that port
        raise ImportFailed(f"{url} did not answer like Label Studio ({type(exc).__name__}); check --url") from None
    return client


def resolve_project(client, project_id: Optional[int], new_name: Optional[str],
                    config: Optional[str]) -> tuple[int, bool]:
    """Return (project id, created?) for `--project ID` or `--new-project NAME`.

    `--new-project` reuses the one project of that title if it exists (so a re-run imports nothing twice)
    and refuses a different label config for it. Raises ImportFailed for a missing project, several
    projects of that title, or a new project without a label config.
    """
    from label_studio_sdk.core.api_error import ApiError

    if project_id is not None:
        try:
            client.projects.get(id=project_id)
        except ApiError as exc:
            raise ImportFailed(f"Label Studio has no project {project_id} you can see "
                               f"(HTTP {exc.status_code})") from None
        return project_id, False
    same = [_as_dict(p) for p in client.projects.list(title=new_name) if _as_dict(p).get("title") == new_name]
    if len(same) > 1:
        ids = ", ".join(str(p["id"]) for p in same)
        raise ImportFailed(f"{len(same)} projects are titled {new_name!r} (ids {ids}); pick one with --project ID")
    if same:
        existing = same[0]
        if config is not None and existing.get("label_config", "").strip() != config.strip():
            raise ImportFailed(f"project {new_name!r} (id {existing['id']}) exists with another label config; "
                               "import into it with --project ID (without --labels/--label-config) or choose "
                               "another --new-project name")
        return int(existing["id"]), False
    if config is None:
        raise ImportFailed("--new-project needs the classes: --labels cat,dog,... or --label-config FILE")
    try:
        project = client.projects.create(title=new_name, label_config=config)
    except ApiError as exc:
        raise ImportFailed(f"Label Studio refused to create project {new_name!r}: {_api_detail(exc)}") from None
    return int(project.id), True


def local_storage(client, project_id: int, folder: Path, recursive: bool) -> tuple[dict[str, Any], bool]:
    """Return (the project's Local Storage connection for `folder`, created?), creating or adjusting it.

    Raises ImportFailed with Label Studio's reason when it refuses the path (outside its document root,
    local files not enabled, a folder it cannot see).
    """
    from label_studio_sdk.core.api_error import ApiError

    wanted = dict(regex_filter=IMAGE_REGEX, use_blob_urls=True, recursive_scan=recursive)
    path = str(folder)
    try:
        for storage in map(_as_dict, client.import_storage.local.list(project=project_id)):
            if str(storage.get("path") or "").rstrip("/") != path:
                continue
            if any(storage.get(key) != value for key, value in wanted.items()):
                storage = _as_dict(client.import_storage.local.update(id=storage["id"], **wanted))
            return storage, False
        created = client.import_storage.local.create(project=project_id, path=path, title=STORAGE_TITLE,
                                                     description="one task per image, created by labelloop import",
                                                     **wanted)
    except ApiError as exc:
        raise ImportFailed(f"Label Studio refused {folder} as Local Storage of project {project_id}: "
                           f"{_api_detail(exc)}") from None
    return _as_dict(created), True


def _task_count(client, project_id: int) -> Optional[int]:
    try:
        return int(client.projects.get(id=project_id).task_number or 0)
    except Exception:  # a poll may collide with the sync's writes (SQLite): skip this tick
        return None


def sync(client, project_id: int, storage_id: int, progress: Callable[[int], None] | None = None,
         poll_seconds: float = 0.5) -> tuple[int, int]:
    """Sync the storage (one blocking request in Label Studio); returns (tasks created, files already linked).

    `progress(n)` is called with the number of tasks created so far, polled from the project while the sync
    runs. Raises ImportFailed with Label Studio's traceback tail when the sync fails.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["storage"] = _as_dict(client.import_storage.local.sync(
                id=storage_id, request_options={"timeout_in_seconds": SYNC_TIMEOUT_SECONDS}))
        except Exception as exc:  # reported below, in the caller's thread
            outcome["error"] = exc

    before = _task_count(client, project_id) or 0
    worker = threading.Thread(target=run, name="labelloop-import-sync", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(poll_seconds)
        now = _task_count(client, project_id)
        if progress and now is not None:
            progress(max(0, now - before))
    if "error" in outcome:
        exc = outcome["error"]
        raise ImportFailed(f"syncing storage {storage_id} failed: {_api_detail(exc)}") from None
    storage = outcome["storage"]
    if storage.get("status") == "failed":
        tail = (storage.get("traceback") or "").strip().splitlines()[-1:] or ["no reason given"]
        raise ImportFailed(f"Label Studio could not sync storage {storage_id}: {tail[0]}")
    created = int(storage.get("last_sync_count") or 0)
    if progress:
        progress(created)
    return created, int((storage.get("meta") or {}).get("tasks_existed") or 0)


def import_folder(folder: Path, *, url: str, api_key: str, project_id: Optional[int] = None,
                  new_project: Optional[str] = None, config: Optional[str] = None,
                  document_root: Optional[Path] = None, recursive: bool = False, verify_ssl: bool = True,
                  progress: Callable[[int, int], None] | None = None) -> ImportResult:
    """Create one task per image of `folder` in a Label Studio project; returns what was done.

    Exactly one of `project_id` / `new_project` is needed. `document_root` (Label Studio's
    LOCAL_FILES_DOCUMENT_ROOT, when known) lets bad paths fail before any request. `progress(done, files)`
    follows the sync. Raises ImportFailed with a message naming the cause.
    """
    if (project_id is None) == (new_project is None):
        raise ImportFailed("give exactly one of --project ID or --new-project NAME")
    folder = folder.expanduser().resolve()
    files = image_files(folder, recursive)
    if document_root is not None:
        check_under_root(folder, document_root.expanduser())
    client = connect(url, api_key, verify_ssl)
    pid, project_created = resolve_project(client, project_id, new_project, config)
    storage, storage_created = local_storage(client, pid, folder, recursive)
    report = (lambda done: progress(done, len(files))) if progress else None
    created, existed = sync(client, pid, int(storage["id"]), report)
    return ImportResult(pid, project_created, int(storage["id"]), storage_created, len(files), created, existed)


# -- the command ---------------------------------------------------------------------------------------------------
def import_command(
    folder: Path = typer.Argument(..., help="folder of images, as Label Studio sees it (inside its document root)"),
    project: Optional[int] = typer.Option(None, "--project", help="id of an existing project"),
    new_project: Optional[str] = typer.Option(None, "--new-project", help="title of a project to create (or reuse)"),
    labels: Optional[str] = typer.Option(None, help="classes of a new project: cat,dog,bird"),
    label_config_file: Optional[Path] = typer.Option(None, "--label-config", help="label config XML of a new project"),
    url: Optional[str] = typer.Option(None, envvar=["LABEL_STUDIO_URL", "LABEL_STUDIO_HOST"],
                                      help="Label Studio address (env LABEL_STUDIO_URL)"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LABEL_STUDIO_API_KEY", show_envvar=True,
                                          help="legacy token or personal access token (env LABEL_STUDIO_API_KEY)"),
    document_root: Optional[Path] = typer.Option(None, "--document-root", envvar=list(LOCAL_FILES_ROOT_ENV),
                                                 help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT, to check the "
                                                      "folder before calling it (env LOCAL_FILES_DOCUMENT_ROOT)"),
    recursive: bool = typer.Option(False, "--recursive", help="include images in subfolders"),
    verify_ssl: bool = typer.Option(True, "--verify-ssl/--no-verify-ssl", envvar="VERIFY_SSL"),
) -> None:
    """Create one Label Studio task per image in FOLDER (a Local Storage connection, synced; safe to re-run)."""
    from tqdm import tqdm

    def fail(message: str) -> None:
        typer.secho(f"labelloop import: {message}", fg="red", err=True)
        raise typer.Exit(2)

    if not url:
        fail("give Label Studio's address: --url http://localhost:8080 or LABEL_STUDIO_URL")
    if not api_key:
        fail("give an API key: --api-key <token> or LABEL_STUDIO_API_KEY (Label Studio: Account & Settings)")
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="task", desc="creating tasks", leave=False)
        bar.update(done - bar.n)

    try:
        config = label_config(labels, label_config_file)
        result = import_folder(folder, url=url, api_key=api_key, project_id=project, new_project=new_project,
                               config=config, document_root=document_root, recursive=recursive,
                               verify_ssl=verify_ssl, progress=progress)
    except ImportFailed as exc:
        fail(str(exc))
    finally:
        if bar is not None:
            bar.close()
    typer.echo(f"project {result.project_id}{' (new)' if result.project_created else ''}: "
               f"{result.created} new tasks, {result.existed} already imported, from {result.files} images in "
               f"{folder} (Local Storage {result.storage_id}{', new' if result.storage_created else ''})")
    typer.echo(f"open {url.rstrip('/')}/projects/{result.project_id}/data")
