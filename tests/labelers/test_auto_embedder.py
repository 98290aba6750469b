"""What "auto" chooses: the download path against a loopback hub, the offline and unreachable fallbacks."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants
from PIL import Image

from labelers.auto_embedder import AUTO_FALLBACK, HubClip, choose_auto_embedder
from labelers.embedders import make_embedder
from tests.conftest import TINY_CLIP_CFG
from tests.labelers.fake_hub import FakeHub, SilentHub

ROOT = Path(__file__).resolve().parents[2]
TINY_ARCH, TINY_REPO = "labelloop-tiny-clip", "labelloop/tiny-clip"


@pytest.fixture(scope="module")
def tiny_hub_clip(tmp_path_factory, tiny_clip_spec):
    """(HubClip of the tiny CLIP under a registered open_clip architecture name, its weights bytes)."""
    import open_clip

    config = tmp_path_factory.mktemp("arch") / f"{TINY_ARCH}.json"
    config.write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(config)  # so "open_clip:labelloop-tiny-clip/<weights>" names an architecture
    weights = Path(tiny_clip_spec.split("local-dir:", 1)[1]) / "open_clip_model.safetensors"
    return HubClip(TINY_ARCH, TINY_REPO), weights.read_bytes()


@pytest.fixture
def online(monkeypatch, tmp_path):
    """huggingface_hub online, with an empty cache of its own (conftest puts the test session offline)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("LABELLOOP_CACHE", str(tmp_path / "labelloop-cache"))
    return tmp_path / "hf-cache"


def test_auto_downloads_clip_once_then_uses_the_cache(online, tiny_hub_clip, tiny_clip_spec):
    hub_clip, weights = tiny_hub_clip
    with FakeHub({TINY_REPO: {"open_clip_model.safetensors": weights}}) as hub:
        first = choose_auto_embedder(None, default=hub_clip, endpoint=hub.url, timeout=5)
        downloads = [r for r in hub.requests if r[0] == "GET"]
        again = choose_auto_embedder(None, default=hub_clip, endpoint=hub.url, timeout=5)
    assert first.is_clip and "downloaded" in first.reason
    path = first.spec.split("/", 1)[1]
    assert Path(path).is_relative_to(online) and Path(path).read_bytes() == weights
    assert len(downloads) == 1 and len([r for r in hub.requests if r[0] == "GET"]) == 1  # once
    assert again.spec == first.spec and "in the Hugging Face cache" in again.reason
    # The downloaded weights are the served model: same features as loading its folder directly.
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    downloaded, local = make_embedder(first.spec, device="cpu"), make_embedder(tiny_clip_spec, device="cpu")
    np.testing.assert_allclose(downloaded.encode_images([image]), local.encode_images([image]), atol=1e-5)


def test_hf_endpoint_from_the_environment_is_where_auto_downloads(tmp_path, tiny_hub_clip):
    # A fresh process configured only by environment variables, as a user would.
    _, weights = tiny_hub_clip
    script = ("import sys; sys.path.insert(0, sys.argv[1]);"
              "from labelers.auto_embedder import HubClip, choose_auto_embedder;"
              "print(choose_auto_embedder(None, default=HubClip('some-arch', sys.argv[2])).spec)")
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
           "LABELLOOP_CACHE": str(tmp_path / "ll")}
    with FakeHub({TINY_REPO: {"open_clip_model.safetensors": weights}}) as hub:
        env["HF_ENDPOINT"] = hub.url
        out = subprocess.run([sys.executable, "-c", script, str(ROOT), TINY_REPO], env=env, text=True,
                             capture_output=True, check=True).stdout.strip()
    assert out.startswith("open_clip:some-arch/") and Path(out.split("/", 1)[1]).read_bytes() == weights
    assert Path(out.split("/", 1)[1]).is_relative_to(tmp_path / "hf")
    assert ("HEAD", f"/{TINY_REPO}/resolve/main/open_clip_model.safetensors") in hub.requests


def test_silent_hub_falls_back_after_the_timeout_and_says_so(online, tiny_hub_clip, caplog):
    hub_clip, _ = tiny_hub_clip
    with SilentHub() as hub, caplog.at_level(logging.WARNING, "labelers.auto_embedder"):
        choice = choose_auto_embedder(None, default=hub_clip, endpoint=hub.url, timeout=0.2)
    assert choice.spec == AUTO_FALLBACK
    assert "unreachable" in choice.reason and "within 0.2 s" in choice.reason
    assert any(AUTO_FALLBACK in r.getMessage() and "unreachable" in r.getMessage() for r in caplog.records)


def test_refused_connection_falls_back(online, tiny_hub_clip):
    hub_clip, _ = tiny_hub_clip
    with SilentHub() as hub:
        closed = hub.url  # nothing listens here once the socket is closed
    choice = choose_auto_embedder(None, default=hub_clip, endpoint=closed, timeout=2)
    assert choice.spec == AUTO_FALLBACK and "ConnectError" in choice.reason


def test_hf_hub_offline_makes_no_request(monkeypatch, tmp_path, tiny_hub_clip):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    hub_clip, weights = tiny_hub_clip
    with FakeHub({TINY_REPO: {"open_clip_model.safetensors": weights}}) as hub:
        choice = choose_auto_embedder(None, default=hub_clip, endpoint=hub.url)
    assert choice.spec == AUTO_FALLBACK and "HF_HUB_OFFLINE" in choice.reason and hub.requests == []


def test_repo_without_weights_falls_back_naming_the_files(online, tiny_hub_clip):
    hub_clip, _ = tiny_hub_clip
    with FakeHub({TINY_REPO: {"README.md": b"no weights"}}) as hub:
        choice = choose_auto_embedder(None, default=hub_clip, endpoint=hub.url, timeout=5)
    assert choice.spec == AUTO_FALLBACK and "open_clip_model.safetensors" in choice.reason


def test_unknown_repo_is_named_with_the_status(online, tiny_hub_clip):
    hub_clip, _ = tiny_hub_clip
    with FakeHub({}) as hub:
        choice = choose_auto_embedder(None, default=hub_clip, endpoint=hub.url, timeout=5)
    assert choice.spec == AUTO_FALLBACK and f"answered 404 for {TINY_REPO}" in choice.reason


def test_configured_clip_is_an_argument_not_read_from_env(monkeypatch, tmp_path, tiny_clip_spec):
    monkeypatch.setenv("LABELLOOP_CLIP", str(tmp_path / "elsewhere.safetensors"))
    assert choose_auto_embedder(tiny_clip_spec, download=False).spec == tiny_clip_spec
    assert choose_auto_embedder(None, download=False, default=HubClip(TINY_ARCH, TINY_REPO)).spec == AUTO_FALLBACK
    assert make_embedder("auto", device="cpu", clip=tiny_clip_spec).kind == "clip"


def test_unusable_configured_clip_is_named_in_the_warning(tmp_path, caplog):
    missing = tmp_path / "missing.safetensors"
    with caplog.at_level(logging.WARNING, "labelers.auto_embedder"):
        choice = choose_auto_embedder(str(missing), download=False, default=HubClip(TINY_ARCH, TINY_REPO))
    assert choice.spec == AUTO_FALLBACK and str(missing) in choice.reason
    assert any(str(missing) in r.getMessage() and "ignoring it" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("configured", [None, "open_clip:ViT-B-32/laion2b_s34b_b79k"], ids=["default", "hub-tag"])
def test_default_and_tagged_clip_come_from_open_clips_hub_repo(online, configured):
    # Not a loadable ViT-B-32 (a few bytes): this pins where the weights are looked for and how they are named.
    repo = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    with FakeHub({repo: {"open_clip_model.safetensors": b"stand-in weights"}}) as hub:
        choice = choose_auto_embedder(configured, endpoint=hub.url, timeout=5)
    path = choice.spec.split("/", 1)[1]
    assert choice.spec == f"open_clip:ViT-B-32/{path}" and Path(path).read_bytes() == b"stand-in weights"
    assert ("GET", f"/{repo}/resolve/main/open_clip_model.safetensors") in hub.requests
