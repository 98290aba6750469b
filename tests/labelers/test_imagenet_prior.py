"""Label names onto ImageNet classes through WordNet, and the zero-shot prior on real CIFAR-10 images."""
import numpy as np
import pytest

from labelers.imagenet_prior import WordNetMissing, map_labels_to_imagenet, open_wordnet

# ImageNet-1k's class layout (a fact of the dataset, independent of WordNet): 151-268 are the dog breeds,
# 281-285 the domestic cats, 286-293 the wild and big cats (cougar, lynx, leopard, snow leopard, jaguar, lion,
# tiger, cheetah), 404 is airliner.
DOGS, CATS, AIRLINER = list(range(151, 269)), list(range(281, 294)), [404]


@pytest.fixture(scope="module")
def wordnet():
    try:
        return open_wordnet()
    except WordNetMissing as exc:
        pytest.fail(f"{exc} (the Makefile's setup installs it)")


def test_hand_made_label_set_gets_the_expected_imagenet_classes(wordnet):
    mapping = map_labels_to_imagenet(["dog", "cat", "airplane", "xyzzy"])
    assert mapping.classes == {"dog": DOGS, "cat": CATS, "airplane": AIRLINER, "xyzzy": []}
    assert mapping.matched == ["dog", "cat", "airplane"]
    assert mapping.describe()["xyzzy"] == "no ImageNet class: uniform prior"
    assert mapping.describe()["airplane"] == "1 ImageNet classes (airliner)"
    assert mapping.aggregation.shape == (4, 1000) and mapping.aggregation.sum() == len(DOGS + CATS + AIRLINER)


def test_the_more_specific_label_wins_and_unrelated_labels_share(wordnet):
    mapping = map_labels_to_imagenet(["animal", "Dogs", "n02085620", "car", "truck"])
    chihuahua, minivan = 151, 656
    assert mapping.classes["n02085620"] == [chihuahua]
    assert mapping.classes["Dogs"] == DOGS[1:]  # plural through morphy; greyhounds too, though also "racers"
    assert not set(DOGS) & set(mapping.classes["animal"]) and 0 in mapping.classes["animal"]  # 0: tench
    assert mapping.aggregation[3, minivan] == mapping.aggregation[4, minivan] == 0.5  # a car and a van


def test_model_names_pool_the_senses_of_synonyms(wordnet):
    mapping = map_labels_to_imagenet(["pets", "other"], model_names=[["dog", "cat"], ["xyzzy"]])
    assert mapping.classes == {"pets": sorted(DOGS + CATS), "other": []}


def test_wnids_are_imagenet_1k_in_classifier_order(wordnet):
    from labelers.imagenet_prior import imagenet_class_name, imagenet_wnids

    wnids = imagenet_wnids()
    assert len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)  # ImageNet-1k's order is sorted wnids
    assert (wnids[0], wnids[151], wnids[999]) == ("n01440764", "n02085620", "n15075141")
    # 698 is what EfficientNet-Lite0 answers for scikit-learn's palace photo (tests/labelers/test_embedders.py)
    assert imagenet_class_name(698, wordnet) == "palace" and imagenet_class_name(404, wordnet) == "airliner"


def test_missing_wordnet_names_the_folder_and_the_package(tmp_path):
    with pytest.raises(WordNetMissing, match=f"{tmp_path}.*apt-get install wordnet-base"):
        open_wordnet(tmp_path)


@pytest.fixture(scope="module")
def cifar_effnet(cifar_images):
    import torch

    from labelers.embedders import EfficientNetLite0Embedder

    torch.set_num_threads(1)
    embedder = EfficientNetLite0Embedder(224, device="cpu")
    images, labels = cifar_images
    return embedder, embedder.encode_images(images), labels


def test_imagenet_prior_beats_uniform_on_real_cifar_images(wordnet, cifar_effnet):
    from labelers.head import ClassifierHead
    from labelers.imagenet_prior import imagenet_prior
    from labelers.sample_data import CIFAR10_CLASSES

    embedder, features, labels = cifar_effnet
    prior = imagenet_prior(CIFAR10_CLASSES, embedder)
    assert prior.matched == [c for c in CIFAR10_CLASSES if c != "deer"]  # ImageNet-1k has no deer
    assert prior.details["deer"] == "no ImageNet class: uniform prior"
    probs = ClassifierHead(CIFAR10_CLASSES).init_from_prior(prior).predict_proba(features)
    true = probs[np.arange(len(labels)), labels]
    assert np.log(true).mean() > np.log(0.1) + 0.3  # a better likelihood than the uniform prior's
    assert (probs.argmax(axis=1) == labels).mean() >= 0.3  # uniform: 0.1 (ties)
