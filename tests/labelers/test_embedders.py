import numpy as np
import pytest
import torch
from PIL import Image

from labelers.embedders import EfficientNetLite0Embedder, EmbedderUnavailable, OpenClipEmbedder, make_embedder
from labelers.head import ClassifierHead


@pytest.fixture(scope="module")
def clip(tiny_clip_spec):
    return make_embedder(tiny_clip_spec, device="cpu")


def test_tiny_clip_loads_through_local_dir_and_encodes(clip):
    assert isinstance(clip, OpenClipEmbedder) and clip.has_text and clip.dim == 32
    images = [Image.new("RGB", (48, 40), c) for c in ("red", "green", "blue")]
    features = clip.encode_images(images)
    assert features.shape == (3, 32) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)


def test_batched_encoding_equals_one_by_one(clip):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(5)]
    batched = clip.encode_images(images, batch_size=5)
    single = np.vstack([clip.encode_images([im]) for im in images])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_zero_shot_weights_are_the_normalised_mean_of_open_clips_prompt_embeddings(clip):
    # Computed here straight from open_clip's tokenizer and text tower, not through encode_texts.
    from labelers.embedders import PROMPT_TEMPLATES

    names = ["cat", "dog", "truck", "ship"]
    weights = clip.zero_shot_weights(names)
    with torch.inference_mode():
        for row, name in zip(weights, names):
            prompts = clip.model.encode_text(clip.tokenizer([t.format(name) for t in PROMPT_TEMPLATES])).numpy()
            mean = (prompts / np.linalg.norm(prompts, axis=1, keepdims=True)).mean(axis=0)
            np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-5)


def test_zero_shot_head_ranks_the_matching_prompt_first(clip):
    # A constructed case with a known answer: the text embedding of "a photo of a <name>." stands in for an
    # image of <name>; the zero-shot head must put that name first, with softmax(scale * cosine) probabilities.
    names = ["cat", "dog", "truck", "ship"]
    weights = clip.zero_shot_weights(names)
    features = clip.encode_texts([f"a photo of a {name}." for name in names])
    head = ClassifierHead(names).init_from_text(weights, clip.logit_scale)
    assert list(head.predict(features)) == [0, 1, 2, 3]
    logits = clip.logit_scale * features.astype(np.float64) @ weights.T
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(head.predict_proba(features), expected / expected.sum(axis=1, keepdims=True),
                               rtol=1e-3)


def test_embedder_id_fingerprints_weights_not_path(tmp_path, tiny_clip_spec):
    import shutil

    source = tiny_clip_spec.split("local-dir:", 1)[1]
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    assert make_embedder(f"open_clip:local-dir:{copy}").id.split("/")[-1] == \
        make_embedder(tiny_clip_spec).id.split("/")[-1]


def test_local_dir_without_weights_is_refused(tmp_path, tiny_clip_spec):
    import shutil

    folder = tmp_path / "noweights"
    folder.mkdir()
    shutil.copy(tiny_clip_spec.split("local-dir:", 1)[1] + "/open_clip_config.json", folder)
    with pytest.raises(EmbedderUnavailable, match="no open_clip weights"):
        make_embedder(f"open_clip:local-dir:{folder}")


def test_unknown_spec_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown embedder spec"):
        make_embedder("resnet-9000")
    with pytest.raises(ValueError, match="pixels"):
        make_embedder("efficientnet-lite0@big")


def test_auto_prefers_clip_when_weights_exist_else_efficientnet(monkeypatch, tmp_path, tiny_clip_spec):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("LABELLOOP_CLIP", tiny_clip_spec)
    assert make_embedder("auto").kind == "clip"
    monkeypatch.delenv("LABELLOOP_CLIP")
    fallback = make_embedder("auto")
    assert isinstance(fallback, EfficientNetLite0Embedder) and fallback.id == "efficientnet-lite0@224"


def test_resolve_auto_spec_names_clip_only_when_its_weights_are_on_disk(monkeypatch, tmp_path, tiny_clip_spec):
    from labelers.embedders import resolve_auto_spec

    monkeypatch.delenv("LABELLOOP_CLIP", raising=False)
    monkeypatch.delenv("LABELLOOP_CLIP_WEIGHTS", raising=False)
    assert resolve_auto_spec() == "efficientnet-lite0@224"  # this machine has no CLIP in the HF cache
    monkeypatch.setenv("LABELLOOP_CLIP", tiny_clip_spec)
    assert resolve_auto_spec() == tiny_clip_spec
    monkeypatch.setenv("LABELLOOP_CLIP", f"open_clip:local-dir:{tmp_path / 'gone'}")
    assert resolve_auto_spec() == "efficientnet-lite0@224"
    weights = tmp_path / "vit-b-32.safetensors"
    weights.write_bytes(b"not loaded here")
    monkeypatch.delenv("LABELLOOP_CLIP")
    monkeypatch.setenv("LABELLOOP_CLIP_WEIGHTS", str(weights))
    assert resolve_auto_spec() == f"open_clip:ViT-B-32/{weights}"  # named, never loaded
    monkeypatch.setenv("LABELLOOP_CLIP_WEIGHTS", str(tmp_path / "missing.safetensors"))
    assert resolve_auto_spec() == "efficientnet-lite0@224"


def test_efficientnet_tf_preprocessing_recognises_a_real_photo():
    # scikit-learn's china.jpg is a palace (ImageNet class 698) under TF-style (x-127)/128 preprocessing.
    from sklearn.datasets import load_sample_image

    embedder = EfficientNetLite0Embedder(224, device="cpu")
    x = embedder.preprocess(Image.fromarray(load_sample_image("china.jpg")))
    assert x.shape == (3, 224, 224) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    with torch.inference_mode():
        logits = embedder.model(x[None])
    assert int(logits.argmax()) == 698
    assert embedder.encode_batch(x[None]).shape == (1, 1280)


def test_channels_last_efficientnet_gives_the_vectors_of_the_contiguous_layout():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(5)]
    fast = EfficientNetLite0Embedder(64, device="cpu")
    plain = EfficientNetLite0Embedder(64, device="cpu", channels_last=False)
    assert fast.id == plain.id  # the same model: cached vectors are shared
    batch = torch.stack([fast.preprocess(im) for im in images])
    np.testing.assert_allclose(fast.encode_batch(batch), plain.encode_batch(batch), atol=1e-5)
    one = np.concatenate([fast.encode_images([im]) for im in images])
    np.testing.assert_allclose(one, plain.encode_batch(batch), atol=1e-5)
