"""The scene generator's object sets: CIFAR-10 files, MNIST / Fashion-MNIST arrays, each scene's truth."""
import numpy as np
import pytest
from PIL import Image

from labelers.relabel import scenes
from labelers.relabel.scenes import ObjectSetMissing, compose_scenes, load_objects
from labelers.sample_data import load_mnist


def test_mnist_objects_are_the_first_images_of_each_class():
    items, labels, names = load_objects("mnist", per_class=3)
    images, all_labels = load_mnist("train")
    assert names == tuple("0123456789")
    assert list(labels) == [c for c in range(10) for _ in range(3)]
    first_seven = int(np.flatnonzero(all_labels == 7)[0])
    assert np.array_equal(items[21], images[first_seven])


def test_an_mnist_scene_is_labelled_with_the_digit_it_shows(tmp_path):
    # one object covering the whole canvas: the scene is that digit resized, so the digit it matches best
    # among all candidates must be the scene's truth and (noise 0) its given label
    items, labels, _ = load_objects("mnist", per_class=4)
    out = compose_scenes(items, labels, 12, tmp_path, count_probs=(1.0,), canvas=56, dominant=(1.0, 1.0),
                         n_classes=10, seed=5)
    candidates = np.stack([np.asarray(Image.fromarray(i).convert("RGB").resize((56, 56), Image.BILINEAR), float)
                           for i in items])
    for path, truth, given in zip(out.paths, out.truth, out.original):
        scene = np.asarray(Image.open(path).convert("RGB"), float)
        best = int(np.argmin(((candidates - scene) ** 2).sum(axis=(1, 2, 3))))
        assert truth == [int(labels[best])] and given == labels[best]


def test_multi_object_mnist_scenes_hold_distinct_classes_first_given(tmp_path):
    items, labels, _ = load_objects("mnist", per_class=4)
    out = compose_scenes(items, labels, 30, tmp_path, count_probs=(0, 0, 1.0), n_classes=10, seed=2)
    assert all(len(t) == 3 for t in out.truth)  # three objects of three different classes
    assert all(int(o) in t for o, t in zip(out.original, out.truth))


def test_unknown_object_set_is_refused_by_name():
    with pytest.raises(ValueError, match="'cifar100'.*cifar10, mnist, fashion-mnist"):
        load_objects("cifar100", per_class=1)


def test_missing_fashion_mnist_names_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(scenes, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(ObjectSetMissing, match="make setup-fashion-mnist"):
        load_objects("fashion-mnist", per_class=1)


# Needs Debian's dataset-fashion-mnist, which `make test` installs (make setup-fashion-mnist): no skip, a missing
# set fails with the ObjectSetMissing message naming that target.
def test_fashion_mnist_objects_carry_its_class_names():
    items, labels, names = load_objects("fashion-mnist", per_class=2)
    assert names[9] == "Ankle boot" and list(labels) == [c for c in range(10) for _ in range(2)]
    assert items[0].shape == (28, 28)
