"""The active-learning benchmark's report plumbing: learner groups and superseded RESULTS.md sections."""
from benchmarks import results_file
from benchmarks.bench_active_learning import learner_of


def test_learner_of_groups_strategies_by_what_they_train():
    assert learner_of("random") == "" and learner_of("margin+kmeans") == ""
    assert learner_of("margin+kmeans+mix+typical+cover2") == "mix"
    assert learner_of("margin+kmeans+mix+self") == learner_of("random+mix+self") == "mix+self"
    assert learner_of("random+mix+self40") == "mix+self40"


def test_remove_section_deletes_only_that_section(tmp_path, monkeypatch):
    monkeypatch.setattr(results_file, "RESULTS", tmp_path / "RESULTS.md")
    for name in ("a", "b", "c"):
        results_file.write_section(name, f"text {name}")
    assert results_file.remove_section("b") is True
    text = (tmp_path / "RESULTS.md").read_text()
    assert "text b" not in text and "<!-- b:" not in text
    assert text.index("text a") < text.index("text c") and "\n\n\n" not in text
    assert results_file.remove_section("b") is False
    assert results_file.remove_section("c") is True
    assert (tmp_path / "RESULTS.md").read_text().endswith("<!-- a:end -->\n")
