"""Shared fixtures for the labelers tests: tiny random VLM labelers (built by tests/conftest.py), CIFAR images."""
import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_labelers(tiny_vlm_dirs):
    """Return {"qwen2-vl": VLMLabeler, "llava-next": VLMLabeler} loaded through from_pretrained (CPU)."""
    import torch

    from labelers.vlm.labeler import VLMLabeler

    torch.set_num_threads(1)
    return {name: VLMLabeler.from_pretrained(str(path), device="cpu") for name, path in tiny_vlm_dirs.items()}


@pytest.fixture(scope="session")
def cifar_images():
    """Return (PIL images, labels) of 20 real CIFAR-10 test images, 2 per class."""
    from labelers.images import load_image
    from labelers.sample_data import cifar10_subset

    paths, labels = cifar10_subset("test", per_class=2)
    return [load_image(p) for p in paths], np.asarray(labels)
