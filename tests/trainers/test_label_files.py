"""Label files attached to a dataset: matched by the image's real key, never by position."""
import csv

import numpy as np
import pytest

from labelers.formats.auto_labels import write_auto_labels
from labelers.sample_data import CIFAR10_CLASSES, sample_data_dir
from trainers.sources import DataSourceError, load_sources


@pytest.fixture(scope="module")
def cifar_train_order():
    """Return the rows of cifar10/train_order.csv (CIFAR batch order, JPEG path, label, original name)."""
    with open(sample_data_dir() / "cifar10" / "train_order.csv", newline="", encoding="utf-8") as fh:
        return sorted(csv.DictReader(fh), key=lambda r: int(r["cifar_index"]))


def _cls_of(label: int) -> list[str]:
    return [CIFAR10_CLASSES[(label + k) % 10] for k in (1, 2, 3)]


def test_cifar10_folder_keys_match_the_real_images(tmp_path, cifar_train_order):
    """`labelloop label` on the CIFAR-10 folder writes `class/NNNN.jpg` rows in folder order, all 50 000 of them."""
    rows = sorted(cifar_train_order, key=lambda r: r["path"])  # ImageFolder order, not CIFAR batch order
    path = write_auto_labels(tmp_path / "auto_labels.csv",
                             [(r["path"].split("/", 1)[1], _cls_of(int(r["label"]))) for r in rows])
    train = load_sources("cifar10", str(path), long_label=False).train
    assert len(train) == 50_000
    expected = (train.ord_labels[:, None] + np.array([1, 2, 3])) % 10
    assert (train.cl_labels == expected).all()


def test_cifar10_seed_names_still_match(tmp_path, cifar_train_order):
    """The seed's raw auto_labels.csv names the original CIFAR files (`camion_s_000148.png`)."""
    rows = cifar_train_order[:300][::-1]
    path = write_auto_labels(tmp_path / "auto_labels.csv",
                             [(r["cifar_filename"], _cls_of(int(r["label"]))) for r in rows])
    train = load_sources("cifar10", str(path), long_label=False).train
    assert train.names == [r["cifar_filename"] for r in rows]
    assert (train.cl_labels == (train.ord_labels[:, None] + np.array([1, 2, 3])) % 10).all()


def test_keys_that_match_nothing_are_refused_not_taken_in_order(tmp_path, cifar_train_order):
    rows = [(f"img_{i}.png", _cls_of(int(r["label"]))) for i, r in enumerate(cifar_train_order)]
    path = write_auto_labels(tmp_path / "auto_labels.csv", rows)
    with pytest.raises(DataSourceError, match=r"none of its rows match .*'img_0.png'.*never by position"):
        load_sources("cifar10", str(path), long_label=False)


def test_two_rows_on_one_image_are_refused(tmp_path, digit_folder):
    """A flat-folder label file and `a/3.png`, `b/3.png` keys: both tails are `3.png`, so the match is ambiguous."""
    from trainers.formats.image_folder import read_image_folder

    base = read_image_folder(digit_folder)
    rows = [(f"x/{base.names[0]}", ["1"]), (f"y/{base.names[0]}", ["2"])]
    path = write_auto_labels(tmp_path / "auto_labels.csv", rows)
    with pytest.raises(DataSourceError, match=r"rows 1 .* and 2 .* both match image"):
        load_sources(str(digit_folder), str(path), long_label=True)


def test_an_embedded_folder_matches_the_label_file_of_the_same_images(tmp_path, digit_folder, tiny_clip_spec):
    """`labelloop embed` writes image names, so a label file keyed `<class>/<file>` attaches to the features."""
    from typer.testing import CliRunner

    from labelloop.cli import app
    from trainers.formats.image_folder import read_image_folder

    from .conftest import DIGITS

    npz = tmp_path / "features.npz"
    result = CliRunner().invoke(app, ["embed", str(digit_folder), "-o", str(npz), "--embedder", tiny_clip_spec,
                                      "--cache", str(tmp_path / "cache.sqlite")])
    assert result.exit_code == 0, result.output
    base = read_image_folder(digit_folder)
    assert np.load(npz)["names"].tolist() == base.names
    rows = [(name, [DIGITS[(y + 1) % 10]]) for name, y in zip(base.names, base.ord_labels)][::-1]
    train = load_sources(str(npz), str(write_auto_labels(tmp_path / "auto_labels.csv", rows)), long_label=True).train
    assert train.features is not None and len(train) == 60
    assert (train.cl_labels[:, 0] == (train.ord_labels + 1) % 10).all()
