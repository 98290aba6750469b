"""The CoT-PL workflow block of docs/pseudo-labels.md, run line by line from a fresh working directory on
tiny-coco with the tiny random models: shards, merge with exclusions / NMS / frequency cut, the merge into
the base instances file and the class weights, then `labelloop export` of the merged records to COCO and
to Label Studio boxes."""
import json
import os
import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from labelloop.cli import app

DOCS = Path(__file__).resolve().parents[2] / "docs" / "pseudo-labels.md"
TINY_COCO = Path("/work/shared/data/tiny-coco/small_coco")


def workflow_commands() -> list[list[str]]:
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"<!-- pseudo-workflow:begin -->\s*```bash\n(.*?)```", text, re.S).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(os.path.expandvars(line)) for line in lines if line.strip() and not line.startswith("#")]


def test_documented_workflow_runs_from_another_directory(tmp_path, monkeypatch, one_torch_thread):
    from labelers.pseudo.tiny import main as build_tiny

    monkeypatch.setenv("TINY_COCO", str(TINY_COCO))
    monkeypatch.chdir(tmp_path)
    commands = workflow_commands()
    assert [c[:3] for c in commands][0] == ["python", "-m", "labelers.pseudo.tiny"] and len(commands) == 6
    runner = CliRunner()
    outputs = []
    for command in commands:
        if command[0] == "python":
            build_tiny(command[3:])
            continue
        assert command[0] == "labelloop"
        result = runner.invoke(app, command[1:])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert "8 images labeled" in outputs[0] and "8 images labeled" in outputs[1]
    assert "16 images from 2 shards" in outputs[2]
    base = json.loads((TINY_COCO / "instances_train2017_small.json").read_text())
    instances = json.loads(Path("merged/instances.json").read_text())
    merged = json.loads(Path("merged/merged.json").read_text())
    assert merged["annotations"][:len(base["annotations"])] == base["annotations"]
    assert len(merged["annotations"]) == len(base["annotations"]) + len(instances["annotations"])
    assert len({a["id"] for a in merged["annotations"]}) == len(merged["annotations"])
    names = {c["name"] for c in instances["categories"] if any(a["category_id"] == c["id"]
                                                               for a in instances["annotations"])}
    assert names and not names & {"person", "dog", "stick"}            # excluded ones went to background
    new = [c for c in merged["categories"] if c["supercategory"] == "pseudo"]
    assert new and all(c["id"] > max(b["id"] for b in base["categories"]) for c in new)
    assert all(any(a["category_id"] == c["id"] for a in merged["annotations"]) for c in new)   # no empty class
    weights = json.loads(Path("merged/class_weights.json").read_text())
    assert len(weights["weights"]) == len(merged["categories"]) + 1 and weights["names"][-1] == "background"
    exported = json.loads(Path("boxes.json").read_text())   # merged/records.jsonl -> COCO -> LS boxes
    assert len(exported["annotations"]) == len(instances["annotations"]) > 0
    assert [c["name"] for c in exported["categories"]] == ["lamp", "kite"]
    tasks = json.loads(Path("ls.json").read_text())
    boxes = [r for t in tasks for p in t["predictions"] for r in p["result"]]
    assert len(boxes) == len(exported["annotations"]) and {b["type"] for b in boxes} == {"rectanglelabels"}
