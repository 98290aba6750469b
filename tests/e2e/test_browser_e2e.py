"""What the annotator sees: `labelloop import` into a real Label Studio, then its pages in headless Chromium.

The project is created the README's way (`labelloop import FOLDER --new-project ... --labels ...`), the
backend is connected, ten annotations train a head, and *Retrieve Predictions* stores its predictions.
The browser then shows the Data Manager (columns ticked and ordering picked through its menus) and the
labeling view; what they render must be what the backend's /predict returns for those tasks.
Chromium missing is a failure that says how to install it (`make setup-browser`), never a skip.
"""
from __future__ import annotations

import re

import httpx
import pytest

from tests.e2e import browser as br
from tests.e2e import ls_steps as steps
from tests.e2e.label_studio_server import start_backend
from tests.e2e.walkthrough import imported_project, labelloop_import, train_on_one_per_class

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
TITLE = "browser e2e"


@pytest.fixture(scope="module")
def imported(label_studio, cifar_files) -> int:
    """The 30 CIFAR-10 images imported with `labelloop import`; returns the new project's id."""
    folder = label_studio.files_root / "cifar10"
    done = labelloop_import(label_studio, str(folder), "--new-project", TITLE, "--labels", ",".join(steps.CLASSES))
    assert done.returncode == 0, done.stderr
    match = re.search(r"project (\d+) \(new\): 30 new tasks, 0 already imported", done.stdout)
    assert match, done.stdout
    return int(match.group(1))


def shown_score(score: float) -> str:
    """How the Data Manager renders a prediction score: three decimals, and 0 as "0"."""
    return "0" if score == 0 else f"{score:.3f}"


@pytest.fixture(scope="module")
def chromium():
    """The Chromium and chromedriver paths; their absence fails the test with the install command."""
    try:
        return br.chromium_paths()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


def test_import_creates_one_task_per_image_once_and_serves_them(label_studio, cifar_files, imported, tmp_path):
    ls = label_studio.client()
    tasks = steps.list_tasks(ls, imported, fields="task_only")
    paths = sorted(t["data"]["image"].split("?d=", 1)[1] for t in tasks)
    assert paths == sorted(path for path, _ in cifar_files)
    # The storage connection is what lets Label Studio serve the files to the browser (404 without one).
    image = httpx.get(tasks[0]["data"]["image"], headers={"Authorization": f"Token {label_studio.token}"},
                      timeout=30.0)
    assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"  # a JPEG

    again = labelloop_import(label_studio, str(label_studio.files_root / "cifar10"), "--new-project", TITLE,
                             "--labels", ",".join(steps.CLASSES))  # the very same command, run twice
    assert again.returncode == 0, again.stderr
    assert f"project {imported}: 0 new tasks, 30 already imported" in again.stdout
    assert len(steps.list_tasks(ls, imported, fields="task_only")) == 30

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.jpg").write_bytes((label_studio.files_root / cifar_files[0][0]).read_bytes())
    refused = labelloop_import(label_studio, str(outside), "--project", str(imported))
    assert refused.returncode == 2
    assert str(outside) in refused.stderr and str(label_studio.files_root) in refused.stderr  # Label Studio's words

    wrong = labelloop_import(label_studio, str(label_studio.files_root / "cifar10"), "--project", str(imported),
                             api_key="not-the-token")
    assert wrong.returncode == 2 and "refused the API key (HTTP 401)" in wrong.stderr


def test_data_manager_shows_our_scores_and_pre_annotations(label_studio, cifar_files, imported, chromium, tmp_path):
    backend = start_backend(label_studio, tmp_path / "model_dir")
    browser = None
    try:
        ls = label_studio.client()
        project = imported_project(ls, imported, dict(cifar_files))
        version, labelled = train_on_one_per_class(ls, project, backend)
        assert len(labelled) == 10

        full = steps.list_tasks(ls, imported)
        response = backend.post("/predict", json={"tasks": full, "project": f"{imported}.0",
                                                  "label_config": steps.label_config()})
        assert response.status_code == 200, response.text
        predicted = {t["id"]: r for t, r in zip(full, response.json()["results"])}
        assert {r["model_version"] for r in predicted.values()} == {version}
        assert len({round(r["score"], 3) for r in predicted.values()}) > 1, "a trained head ranks the tasks"

        # The README's menu names: the Data Manager builds its Actions menu from this list.
        actions = httpx.get(f"{label_studio.url}/api/dm/actions/", params={"project": imported}, timeout=30.0,
                            headers={"Authorization": f"Token {label_studio.token}"}).json()
        assert {"id": "retrieve_tasks_predictions", "title": "Retrieve Predictions"}.items() <= next(
            a for a in actions if a["id"] == "retrieve_tasks_predictions").items()

        browser = br.start_browser(tmp_path / "chromium-profile", width=1400, height=2600)
        br.login(browser, label_studio.url, label_studio.username, label_studio.password)
        br.open_data_manager(browser, label_studio.url, imported)
        br.show_columns(browser, ["Prediction score", "Prediction results"])
        br.order_by(browser, "Prediction score")
        def scored_rows():  # the table re-renders after each menu pick: wait for the sorted, scored one
            rows = br.table_rows(browser)
            scores = [row.cells.get("Prediction score", "") for row in rows]
            return len(rows) == 30 and all(scores) and scores == sorted(scores, key=float) and rows

        try:
            rows = steps.wait_until(scored_rows, "30 rows with scores, sorted", timeout=60.0)
        except AssertionError:
            browser.save_screenshot(str(tmp_path / "data-manager.png"))
            raise AssertionError(f"the Data Manager shows {br.table_rows(browser)[:3]} (screenshot "
                                 f"{tmp_path / 'data-manager.png'})") from None

        # The Data Manager shows the score with three decimals (a score of exactly 0, the first task of the
        # cold-start order, as "0"), sorted ascending, and the labels predicted.
        shown = [(row.task_id, row.cells["Prediction score"]) for row in rows]
        assert shown == [(row.task_id, shown_score(predicted[row.task_id]["score"])) for row in rows]
        assert [float(s) for _, s in shown] == sorted(float(s) for _, s in shown)
        for row in rows:
            label = steps.predicted_label(predicted[row.task_id])
            assert f"choices: [{label}]" in row.cells["Prediction results"], (row, label)

        # The labeling view pre-selects our label and shows the score as a percentage, e.g. "2.08%".
        first = [row.task_id for row in rows if row.task_id not in labelled][:2]
        for task_id in first:
            br.open_task(browser, label_studio.url, imported, task_id)
            expected = steps.predicted_label(predicted[task_id])
            steps.wait_until(lambda: br.checked_choices(browser) == [expected],
                             f"task {task_id} pre-selecting {expected!r}", timeout=30.0)
            percent = f"{100 * predicted[task_id]['score']:.2f}%"
            assert percent in br.page_text(browser), (task_id, percent)
    finally:
        if browser is not None:
            browser.quit()
        backend.stop()
