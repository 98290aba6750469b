"""`make screenshots`: the README walkthrough's pictures, taken from a real Label Studio in headless Chromium.

Starts the e2e Label Studio and backend (tests/e2e), imports 30 CIFAR-10 test images with `labelloop import`,
connects the backend, submits one annotation per class, retrieves the trained head's predictions, and saves
(cropped, resized PNGs under 300 KB) into docs/images/:
- data-manager.png: the Data Manager with the *Prediction score* column, sorted ascending;
- labeling.png: the labeling view of the first task, our choice pre-selected, the score as a percentage;
- model-card.png: *Settings > Model* with the connected backend.

    python -m scripts.screenshots [--out docs/images] [--keep WORKDIR]
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

from tests.e2e import browser as br
from tests.e2e.label_studio_server import REPO, start_backend, start_label_studio
from tests.e2e.walkthrough import copy_images, imported_project, labelloop_import, train_on_one_per_class

MAX_BYTES = 300_000
WIDTH = 1280  # browser viewport; pictures are resized to at most IMAGE_WIDTH
IMAGE_WIDTH = 1000


def save_png(png: bytes, path: Path, crop: tuple[int, int, int, int] | None = None) -> int:
    """Crop (left, top, right, bottom in page pixels), shrink to IMAGE_WIDTH and save `png`; returns bytes.

    Raises RuntimeError when the picture stays over MAX_BYTES even as a 256-colour PNG.
    """
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if crop:  # never past the page: PIL fills that with black
        left, top, right, bottom = crop
        image = image.crop((left, top, min(right, image.width), min(bottom, image.height)))
    if image.width > IMAGE_WIDTH:
        image = image.resize((IMAGE_WIDTH, round(image.height * IMAGE_WIDTH / image.width)), Image.LANCZOS)
    for colors in (None, 256, 64):
        out = io.BytesIO()
        (image if colors is None else image.quantize(colors=colors)).save(out, "PNG", optimize=True)
        if out.tell() <= MAX_BYTES:
            path.write_bytes(out.getvalue())
            return out.tell()
    raise RuntimeError(f"{path.name} is {out.tell()} bytes even with 64 colours (limit {MAX_BYTES})")


def prepare(workdir: Path):
    """Label Studio + backend + an imported, trained project; returns (ls server, backend, project id, annotated ids)."""
    from labelers.sample_data import CIFAR10_CLASSES, cifar10_subset

    ls_server = start_label_studio(workdir)
    paths, labels = cifar10_subset("test", per_class=3)
    folder = ls_server.files_root / "cifar10"
    truth = copy_images(paths, [CIFAR10_CLASSES[i] for i in labels], folder)
    done = labelloop_import(ls_server, str(folder), "--new-project", "CIFAR-10 demo",
                            "--labels", ",".join(CIFAR10_CLASSES))
    if done.returncode != 0:
        raise RuntimeError(f"labelloop import failed: {done.stderr}")
    print(done.stdout.strip())
    client = ls_server.client()
    project_id = next(p.id for p in client.projects.list() if p.title == "CIFAR-10 demo")
    backend = start_backend(ls_server, workdir / "model_dir", embedder="efficientnet-lite0@128")
    _, annotated = train_on_one_per_class(client, imported_project(client, project_id, truth), backend)
    return ls_server, backend, project_id, annotated


def shoot(ls_server, project_id: int, annotated: set[int], out: Path, profile: Path) -> dict[str, int]:
    """Take the three pictures; returns {file name: bytes}."""
    from selenium.webdriver.common.by import By

    browser = br.start_browser(profile, width=WIDTH, height=800)
    sizes = {}
    try:
        br.login(browser, ls_server.url, ls_server.username, ls_server.password)
        br.open_data_manager(browser, ls_server.url, project_id)
        br.show_columns(browser, ["Prediction score"])
        br.order_by(browser, "Prediction score")
        br.wait_for(browser, br.images_loaded, "the Data Manager thumbnails")
        rows = br.table_rows(browser)
        sizes["data-manager.png"] = save_png(browser.get_screenshot_as_png(), out / "data-manager.png")

        # Tall enough for every choice under the (scaled-up) image; cropped below the last one.
        browser.set_window_size(WIDTH, 1400)
        first = next(row.task_id for row in rows if row.task_id not in annotated)
        br.open_task(browser, ls_server.url, project_id, first)
        br.wait_for(browser, lambda b: br.checked_choices(b), "the pre-selected choice")
        br.wait_for(browser, lambda b: br.images_loaded(b, "img", min_width=200), "the task image")
        bottom = br.bottom_of(browser, "input[name]") + 16
        sizes["labeling.png"] = save_png(browser.get_screenshot_as_png(), out / "labeling.png",
                                         crop=(0, 0, WIDTH, bottom))

        browser.set_window_size(WIDTH, 800)
        browser.get(f"{ls_server.url}/projects/{project_id}/settings/ml")
        br.wait_for(browser, lambda b: b.find_elements(By.XPATH, "//*[normalize-space(.)='Connected']"),
                    "the model card")
        bottom = br.bottom_of(browser, "input[type=checkbox], button[type=submit]") + 24
        sizes["model-card.png"] = save_png(browser.get_screenshot_as_png(), out / "model-card.png",
                                           crop=(0, 0, 1000, bottom or 700))
    finally:
        browser.quit()
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one, deleted)")
    args = parser.parse_args(argv)
    br.chromium_paths()  # fail first, with the install hint, before booting Label Studio
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="labelloop-screens-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ls_server = backend = None
    try:
        ls_server, backend, project_id, annotated = prepare(workdir)
        for name, size in shoot(ls_server, project_id, annotated, args.out, workdir / "chromium-profile").items():
            print(f"{args.out / name}: {size // 1000} KB")
    finally:
        if backend is not None:
            backend.stop()
        if ls_server is not None:
            ls_server.stop()
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
