"""Small real-image fixtures for the trainers tests (MNIST digits from the shared data)."""
import numpy as np
import pytest

from labelers.sample_data import load_mnist, write_image_folder

DIGITS = [str(d) for d in range(10)]


@pytest.fixture(scope="session")
def mnist_small():
    """Return (images 60 x 28 x 28 uint8, labels 60): the first six of each digit in the test split."""
    images, labels = load_mnist("test")
    index = np.concatenate([np.flatnonzero(labels == d)[:6] for d in range(10)])
    return images[index], labels[index]


@pytest.fixture()
def digit_folder(tmp_path, mnist_small):
    """Return an ImageFolder tree root/<digit>/<index>.png of 60 real MNIST digits."""
    images, labels = mnist_small
    return write_image_folder(images, labels, DIGITS, tmp_path / "digits")
