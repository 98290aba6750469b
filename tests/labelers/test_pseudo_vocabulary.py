"""Open vocabulary: the strict name parser, bounded re-asks through the real generation path, and the
mapping of free names onto a label set (exact, synonym list, text embedding) with unmapped names counted."""
import numpy as np
import pytest
from PIL import Image

from labelers.pseudo.naming import ask_names, parse_category_name
from labelers.pseudo.questions import ask_chain
from labelers.pseudo.settings import load_pseudo_settings
from labelers.pseudo.vocabulary import (NameMapper, VocabularyError, load_synonyms, map_records,
                                        merge_synonyms)
from labelers.pseudo.postprocess import cross_category_nms


@pytest.mark.parametrize("text, name", [("Dog", "dog"), ("  a Traffic   light. ", "traffic light"),
                                        ("the cat", "cat"), ("hot-dog", "hot-dog")])
def test_parser_accepts_one_or_two_word_names(text, name):
    assert parse_category_name(text) == name


@pytest.mark.parametrize("text", ["", "It is a big dog", "dog, cat", "dog/cat", "unknown", "Unsure.", "B",
                                  "dog\ncat", "3 dogs", '"dog"'])
def test_parser_refuses_anything_else(text):
    assert parse_category_name(text) is None


def test_parser_word_limit_is_a_setting():
    assert parse_category_name("red fire hydrant") is None
    assert parse_category_name("red fire hydrant", max_words=3) == "red fire hydrant"


class Scripted:
    """A generator that answers from a script per image and records every prompt it was given."""

    def __init__(self, scripts):
        self.scripts, self.prompts = [list(s) for s in scripts], []

    def __call__(self, vlm, images, prompts, max_new_tokens, batch_size, first_ids):
        self.prompts.append(list(prompts))
        return [self.scripts[image.info["index"]].pop(0) for image in images], [None] * len(images)


def images(n):
    out = []
    for i in range(n):
        image = Image.fromarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8))
        image.info["index"] = i
        out.append(image)
    return out


@pytest.fixture(scope="module")
def qwen(tiny_vlm_dirs):
    from labelers.vlm.loading import load_vlm
    from labelers.vlm.settings import load_settings

    return load_vlm(str(tiny_vlm_dirs["qwen2-vl"]), load_settings(), device="cpu")


def test_reasks_are_bounded_and_quote_the_previous_answer(qwen, one_torch_thread):
    settings = load_pseudo_settings().questions
    gen = Scripted([["Dog."], ["I think it is a cat", "cat"], ["no idea at all", "?", "no idea, sorry", "never"]])
    answers = ask_names(qwen, images(3), settings, generate=gen)
    assert [a.name for a in answers] == ["dog", "cat", None]
    assert [a.attempts for a in answers] == [1, 2, 3]                   # 1 ask + open_max_retries (2)
    assert [len(p) for p in gen.prompts] == [3, 2, 1]                   # each round batches the pending ones
    assert "I think it is a cat" in gen.prompts[1][0] and "no idea at all" in gen.prompts[1][1]
    assert 0 < answers[0].probability < 1 and 0 < answers[1].probability < 1 and answers[2].probability == 0


def test_open_vocabulary_chain_fills_the_name_into_step_3(qwen, one_torch_thread, monkeypatch):
    import labelers.pseudo.questions as questions

    asked = []
    real = questions.option_probabilities

    def spy(vlm, imgs, texts, n, prefix, batch_size):
        asked.append(list(texts))
        return real(vlm, imgs, texts, n, prefix, batch_size)
    monkeypatch.setattr(questions, "option_probabilities", spy)
    settings = load_pseudo_settings(overrides={"questions": {"min_object_prob": 0.0}}).questions
    answers = ask_chain(qwen, images(2), None, settings, generate=Scripted([["zebra"], ["x1", "x2", "x3"]]))
    assert answers[0].category == "zebra" and not answers[0].unnamed
    assert answers[1].category is None and answers[1].unnamed and answers[1].name_raw == ["x1", "x2", "x3"]
    assert len(asked[-1]) == 1 and "zebra" in asked[-1][0]             # step 3 only for the named region
    assert answers[0].score == pytest.approx(answers[0].p_object * answers[0].p_category) and answers[0].score > 0


def test_real_generation_on_a_random_model_stays_bounded(qwen, one_torch_thread):
    settings = load_pseudo_settings(overrides={"questions": {"open_max_new_tokens": 3}}).questions
    answers = ask_names(qwen, images(2), settings)
    assert all(1 <= a.attempts <= 3 for a in answers)
    assert all((a.name is None) == (a.attempts == 3 and parse_category_name(a.raw[-1]) is None) for a in answers)


def test_synonyms_default_file_and_flag_pairs(tmp_path):
    table = load_synonyms()
    assert table["puppy"] == "dog" and table["woman"] == "person" and "dog" not in table
    assert load_synonyms("doggo=dog,Sofa=settee")["sofa"] == "settee"     # the user's pairs win
    path = tmp_path / "s.yaml"
    path.write_text("dog: [puppy]\nwolf: [puppy]\n")
    with pytest.raises(VocabularyError, match="'puppy' is a synonym of both 'dog' and 'wolf'"):
        load_synonyms(path)
    with pytest.raises(VocabularyError, match="synonym=name"):
        load_synonyms("doggo")


class FakeEncoder:
    """Deterministic text encoder: fixed unit vectors per known text, an orthogonal one otherwise."""
    table = {"dog": [1, 0, 0], "cat": [0, 1, 0], "hound dog": [0.9, 0.1, 0], "feline": [0.6, 0.8, 0]}

    def encode_texts(self, texts):
        rows = [np.asarray(self.table.get(t, [0, 0, 1]), dtype=float) for t in texts]
        return np.stack([r / np.linalg.norm(r) for r in rows])


def test_mapper_exact_then_synonym_then_embedding_threshold():
    mapper = NameMapper(["Dog", "cat"], load_synonyms(), FakeEncoder(), min_similarity=0.9)
    assert mapper.map("dog").label == "Dog" and mapper.map("dog").how == "exact"
    assert mapper.map("kitten").label == "cat" and mapper.map("kitten").how == "synonym"
    hound = mapper.map("hound dog")
    assert (hound.label, hound.how) == ("Dog", "embedding") and hound.similarity == pytest.approx(0.9 / np.hypot(0.9, 0.1))
    feline = mapper.map("feline")                     # best is cat at 0.8 < 0.9: unmapped, similarity reported
    assert feline.label is None and feline.similarity == pytest.approx(0.8)
    assert NameMapper(["puppy"], load_synonyms()).map("dog").label == "puppy"   # label itself a synonym


def test_mapper_through_a_tiny_random_open_clip(tiny_clip_spec):
    from labelers.embedders import make_embedder

    encoder = make_embedder(tiny_clip_spec, device="cpu")
    labels = ["dog", "cat", "bus"]
    mapper = NameMapper(labels, {}, encoder, min_similarity=-1.0)
    match = mapper.map("sports car")
    vectors = encoder.encode_texts(labels + ["sports car"])
    assert match.how == "embedding" and match.label == labels[int(np.argmax(vectors[:3] @ vectors[3]))]
    assert match.similarity == pytest.approx(float(np.max(vectors[:3] @ vectors[3])), abs=1e-5)


def box(bbox, category, score=0.5):
    return {"bbox": bbox, "category": category, "foreground": True, "score": score}


def test_map_records_counts_unmapped_names_and_keeps_them_on_request():
    records = [{"image_id": 1, "boxes": [box([0, 0, 10, 10], "puppy"), box([20, 20, 5, 5], "lamp"),
                                         box([40, 0, 5, 5], "lamp"), box([0, 40, 5, 5], "dog")]}]
    mapper = NameMapper(["dog", "cat"], load_synonyms())
    mapped, report = map_records(records, mapper)
    assert [b["category"] for b in mapped[0]["boxes"]] == ["dog", "dog"]
    assert mapped[0]["boxes"][0]["open_name"] == "puppy" and len(mapped[0]["unmapped"]) == 2
    assert report.unmapped == {"lamp": 2} and report.matched == {"synonym": 1, "exact": 1}
    assert "2 boxes with 1 unmapped names ('lamp' 2) left out" in report.summary()
    kept, report = map_records(records, mapper, unmapped="keep")
    assert [b["category"] for b in kept[0]["boxes"]] == ["dog", "lamp", "lamp", "dog"] and report.unmapped == {"lamp": 2}
    assert records[0]["boxes"][0]["category"] == "puppy"                # input untouched


def test_synonym_merging_gives_one_object_one_label():
    records = [{"image_id": 1, "boxes": [box([0, 0, 10, 10], "puppy", 0.9), box([1, 0, 10, 10], "dog", 0.6)]}]
    merged, renamed = merge_synonyms(records, load_synonyms())
    assert renamed == {("puppy", "dog"): 1}
    one = cross_category_nms(merged, 0.5)[0]["boxes"]
    assert [(b["category"], b["score"], b["open_name"]) for b in one] == [("dog", 0.9, "puppy")]
