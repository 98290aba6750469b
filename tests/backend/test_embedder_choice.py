"""The backend's embedder "auto": it passes settings.clip to labelers.auto_embedder and /health says why."""
from __future__ import annotations

from fastapi.testclient import TestClient

import labelers.auto_embedder as auto
from backend.app import create_app
from backend.runtime import Runtime


def test_auto_uses_settings_clip_and_health_says_why_it_fell_back(make_settings, monkeypatch, tmp_path):
    monkeypatch.setattr(auto, "_offline", lambda: True)  # HF_HUB_OFFLINE as huggingface_hub reads it
    monkeypatch.setattr(auto.HubClip, "cached_weights", lambda self: None)  # nothing in the HF cache
    monkeypatch.delenv("LABELLOOP_CLIP", raising=False)
    missing = tmp_path / "no-such-clip.safetensors"
    runtime = Runtime(make_settings(embedder="auto", clip=str(missing)), embedder_loader=lambda spec: None)
    with TestClient(create_app(runtime=runtime, preload=False)) as client:
        embedder = client.get("/health").json()["embedder"]
    assert embedder["spec"] == auto.AUTO_FALLBACK and embedder["family"] == "efficientnet-lite0"
    assert embedder["configured"] == "auto"
    assert f"configured CLIP '{missing}'" in embedder["reason"]  # the setting reached the rule
    assert "HF_HUB_OFFLINE is set" in embedder["reason"]


def test_auto_takes_the_configured_clip_when_its_weights_are_on_disk(make_settings, tmp_path):
    weights = tmp_path / "open_clip_model.safetensors"
    weights.write_bytes(b"not loaded by this test")
    runtime = Runtime(make_settings(embedder="auto", clip=str(weights)), embedder_loader=lambda spec: None)
    status = runtime.embedder_status()
    assert status["spec"] == f"open_clip:ViT-B-32/{weights}" and status["zero_shot"]
    assert status["reason"] == f"auto: configured CLIP weights {weights}"
