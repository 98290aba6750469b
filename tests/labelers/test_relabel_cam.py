"""Class-activation-map proposals: the algebra (CAM mean = the head's pooled logit), the box around a peak, and
on a real scene a CAM box covers the object it was computed for."""
import numpy as np
import pytest
from PIL import Image

from labelers.relabel.cam import cam_box, cam_boxes, class_activation_maps
from labelers.relabel.region_features import map_windows


def test_cam_mean_over_cells_is_the_heads_logit_on_the_pooled_embedding():
    rng = np.random.default_rng(0)
    fmap, weight, bias = rng.normal(size=(6, 3, 4)), rng.normal(size=(2, 6)), rng.normal(size=2)
    cams = class_activation_maps(fmap, weight, bias)
    assert cams.shape == (2, 3, 4)
    assert cams.mean(axis=(1, 2)) == pytest.approx(weight @ fmap.mean(axis=(1, 2)) + bias)
    assert cams[1, 2, 3] == pytest.approx(weight[1] @ fmap[:, 2, 3] + bias[1])
    with pytest.raises(ValueError, match="do not fit"):
        class_activation_maps(fmap, rng.normal(size=(2, 5)))


def test_cam_box_is_the_connected_area_around_the_peak():
    cam = np.zeros((3, 3))
    cam[0, 0] = 10.0  # top-left cell of a 96 px image: cells are 32 px
    cam[2, 2] = 4.0  # a weaker separate peak: below half the range, and not connected
    box = cam_box(cam, 96, 96, fraction=0.5)
    assert box.left == 0 and box.top == 0 and 16 <= box.right <= 48 and 16 <= box.bottom <= 48
    assert cam_box(np.ones((3, 3)), 96, 64).as_tuple() == (0, 0, 96, 64)  # flat: the whole image
    fmap = np.zeros((2, 3, 3))
    fmap[0, 0, 0], fmap[1, 2, 2] = 1.0, 1.0  # class 0 (channel 0) top-left, class 1 bottom-right
    first, second = cam_boxes(fmap, np.eye(2), None, 96, 96, [0, 1], contrastive=False)
    assert first.left == 0 and first.top == 0 and second.right == 96 and second.bottom == 96
    assert len(cam_boxes(fmap, np.eye(2), None, 96, 96, [0, 0], contrastive=False)) == 1  # a repeated class: one box


def test_map_windows_whole_first_then_every_window():
    maps = np.arange(2 * 1 * 3 * 3, dtype=np.float32).reshape(2, 1, 3, 3)
    regions = map_windows(maps, (1, 2))
    assert len(regions) == 2 and regions[0].shape == (1 + 9 + 4, 1)
    assert regions[0][0, 0] == pytest.approx(4.0) and regions[0][1, 0] == 0.0  # mean of 0..8; first cell
    assert regions[1][10, 0] == pytest.approx(np.mean([9, 10, 12, 13]))  # image 1, top-left 2x2 window
    with pytest.raises(ValueError, match="does not fit"):
        map_windows(maps, (4,))


@pytest.mark.slow
def test_a_cam_box_on_a_real_scene_covers_the_object_it_was_computed_for(tmp_path):
    """One CIFAR-10 object (60 px) in each corner of a 128 px canvas, for each of the 10 classes: the box
    from that class's CAM (head trained on 40 images per class) holds the object's centre and not the
    opposite corner's point. Measured 31 of 40; a box that ignored the image would manage at most ~1/4."""
    from labelers.cache import EmbeddingCache, embed_files
    from labelers.embedders import make_embedder
    from labelers.relabel.metrics import multi_hot
    from labelers.relabel.region_features import feature_maps
    from labelers.relabel.rounds import RelabelSettings, fit_head
    from labelers.sample_data import cifar10_subset

    paths, labels = cifar10_subset("train", per_class=40)
    model = make_embedder("efficientnet-lite0@128")  # a 4 x 4 map
    features = embed_files(model, EmbeddingCache(tmp_path / "cache.sqlite"), paths).features
    head = fit_head(features, multi_hot([[int(lab)] for lab in labels], 10), [str(i) for i in range(10)],
                    RelabelSettings())
    objects, _ = cifar10_subset("train", per_class=1, offset=500)  # one unseen image per class, in class order
    scenes, where = [], []
    for k, path in enumerate(objects):
        for x, y in ((0, 0), (68, 0), (0, 68), (68, 68)):
            scene = Image.new("RGB", (128, 128), (124, 116, 104))
            scene.paste(Image.open(path).convert("RGB").resize((60, 60)), (x, y))
            scenes.append(scene)
            where.append((k, x + 30, y + 30))
    covered = 0
    for fmap, (k, cx, cy) in zip(feature_maps(model, scenes), where):
        box = cam_boxes(fmap, head.weight.numpy(), head.bias.numpy(), 128, 128, [k])[0]
        ox, oy = 127 - cx, 127 - cy  # the opposite corner's point
        covered += (box.left <= cx < box.right and box.top <= cy < box.bottom
                    and not (box.left <= ox < box.right and box.top <= oy < box.bottom))
    assert covered >= 28, covered  # >= 70 % of 40
