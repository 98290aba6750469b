"""Every command that finds a label-only source's images under a folder spells that option --image-root, keeps its
older spelling as an alias, and its errors name an option the command really has. Each case stops before any
model is loaded: the image is missing, or (pseudo-label) the run is empty."""
from __future__ import annotations

import json
import re

import pytest
import typer
from typer.testing import CliRunner

from labelloop.cli import app

# command words: the older spellings of --image-root on it
ALIASES = {("relabel",): [], ("pseudo-label", "run"): ["--images-root"],
           ("label",): ["--local-files-root", "--local_files_root"], ("audit",): ["--images"]}


def _command(words: tuple[str, ...]):
    command = typer.main.get_command(app)
    for word in words:
        command = command.commands[word]
    return command


def _options(words: tuple[str, ...]) -> set[str]:
    return {name for param in _command(words).params for name in (*param.opts, *param.secondary_opts)}


def _image_root_names(words: tuple[str, ...]) -> list[str]:
    (param,) = [p for p in _command(words).params if "--image-root" in p.opts]
    return list(param.opts)


@pytest.mark.parametrize("words", sorted(ALIASES))
def test_image_root_is_one_option_with_its_older_spellings(words):
    assert _image_root_names(words)[0] == "--image-root"
    assert sorted(_image_root_names(words)[1:]) == sorted(ALIASES[words])


def _export(tmp_path, image="/data/local-files/?d=pets/cat0.png") -> str:
    task = {"id": 1, "data": {"image": image}, "annotations": [
        {"result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}]}]}
    path = tmp_path / "export.json"
    path.write_text(json.dumps([task]))
    return str(path)


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _hinted_options(output: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z_-]*", output))


@pytest.fixture
def elsewhere(tmp_path):
    """A folder that does not hold the export's image, so each command stops at the missing image."""
    root = tmp_path / "root"
    root.mkdir()
    return root


CASES = {  # command words, the arguments before the image root
    "audit": (("audit",), lambda export: ["audit", export, "--classes", "cat,dog"]),
    "label": (("label",), lambda export: ["label", export, "--classes", "cat,dog"]),
    "relabel": (("relabel",), lambda export: ["relabel", "--data", export]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_spelling_reaches_the_reader_and_the_error_names_an_option_the_command_has(case, tmp_path, elsewhere,
                                                                                       monkeypatch):
    monkeypatch.delenv("LOCAL_FILES_DOCUMENT_ROOT", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", raising=False)
    words, build = CASES[case]
    export = _export(tmp_path)
    for spelling in ["--image-root", *ALIASES[words]]:
        result = _invoke(*build(export), spelling, elsewhere, "--output-dir", tmp_path / "out")
        assert result.exit_code != 0 and "not found" in result.output, (spelling, result.output)
        assert str(elsewhere) in result.output, spelling  # the folder given under this spelling was searched
    bare = _invoke(*build(export), "--output-dir", tmp_path / "out")  # no root: the hint says which option
    assert bare.exit_code != 0 and "--image-root" in bare.output, bare.output
    assert _hinted_options(bare.output) <= _options(words), bare.output


def test_pseudo_label_reads_a_label_studio_export_under_either_spelling(tmp_path, elsewhere, monkeypatch):
    import labelers.pseudo.run as pseudo_run

    roots = []
    listing = pseudo_run.list_label_studio
    monkeypatch.setattr(pseudo_run, "list_label_studio",
                        lambda export, images_root=None, image_key=None: roots.append(images_root)
                        or listing(export, images_root, image_key))
    export = _export(tmp_path)
    for spelling in ("--image-root", "--images-root"):
        # --start 1 --end 1 is refused right after the images are listed: nothing is loaded
        result = _invoke("pseudo-label", export, spelling, elsewhere, "--labels", "cat", "--start", 1, "--end", 1,
                         "--output-dir", tmp_path / "out")
        assert result.exit_code != 0 and "--end" in result.output, result.output
    assert roots == [elsewhere, elsewhere]


def test_audit_of_an_auto_labels_csv_without_images_names_audits_own_option(tmp_path):
    csv = tmp_path / "auto_labels.csv"
    csv.write_text("a.png,cat\n")
    result = _invoke("audit", csv, "--classes", "cat,dog", "--output-dir", tmp_path / "out")
    assert result.exit_code != 0 and "pass --image-root" in result.output, result.output  # was "--data"
    assert _hinted_options(result.output) <= _options(("audit",))


def test_a_relabel_holdout_image_hint_does_not_send_to_image_root(tmp_path):
    from labelers.relabel.inputs import RelabelInputError, read_holdout

    holdout = tmp_path / "holdout.json"
    holdout.write_text(json.dumps({"data": [{"img_path": "gone.png", "labels": [0]}]}))
    with pytest.raises(RelabelInputError, match="gone.png.*not found") as err:
        read_holdout(holdout, 2)
    assert "--image-root" not in str(err.value)  # the holdout is read next to its file only


@pytest.mark.parametrize("args", [("export", "{export}", "{out}/out.csv"), ("train", "--label-path", "{export}"),
                                  ("export", "{csv}", "{out}/out.csv")])
def test_train_and_export_hints_name_their_dataset_option(args, tmp_path, monkeypatch):
    # train and export find a label file's images under --data (the dataset option, not renamed)
    monkeypatch.delenv("LOCAL_FILES_DOCUMENT_ROOT", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", raising=False)
    csv = tmp_path / "auto_labels.csv"
    csv.write_text("a.png,cat\n")
    result = _invoke(*[a.format(export=_export(tmp_path), out=tmp_path, csv=csv) for a in args])
    assert result.exit_code != 0 and "pass --data" in result.output, result.output
    assert _hinted_options(result.output) <= _options(args[:1])
