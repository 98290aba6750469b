"""Regions: grids cover the image, crops stay inside, small images are refused by name."""
import numpy as np
import pytest
from PIL import Image

from labelers.relabel.regions import RegionError, felzenszwalb_boxes, grid, propose, random_crops


@pytest.mark.parametrize("width,height,rows", [(100, 60, 2), (37, 53, 3), (224, 224, 4)])
def test_grid_covers_every_pixel_once(width, height, rows):
    cover = np.zeros((height, width), int)
    for box in grid(width, height, rows):
        cover[box.top:box.bottom, box.left:box.right] += 1
    assert (cover == 1).all()


@pytest.mark.parametrize("size_method", ["fixed", "range", 20])
def test_random_crops_are_inside_the_image_and_square(size_method):
    boxes = random_crops(300, 40, 50, size_method, seed=3)
    assert len(boxes) == 50
    for b in boxes:
        assert 0 <= b.left < b.right <= 300 and 0 <= b.top < b.bottom <= 40
        assert b.right - b.left == b.bottom - b.top
    assert len({b.as_tuple() for b in boxes}) > 10  # really random positions


def test_fixed_is_224_or_ninety_percent_of_a_small_short_side():
    assert {b.right - b.left for b in random_crops(500, 400, 5, "fixed")} == {224}
    assert {b.right - b.left for b in random_crops(100, 80, 5, "fixed")} == {72}


def test_an_image_too_small_for_the_crop_size_is_named():
    with pytest.raises(RegionError, match=r"cat_01\.jpg.*32x32.*64-pixel"):
        random_crops(32, 32, 3, 64, name="cat_01.jpg")


def test_propose_puts_the_whole_image_first_once():
    image = Image.new("RGB", (64, 48))
    boxes = propose(image, "grid", grid_rows=2)
    assert boxes[0].as_tuple() == (0, 0, 64, 48) and len(boxes) == 5
    with pytest.raises(RegionError, match="unknown region method"):
        propose(image, "selective-search")


def test_felzenszwalb_finds_two_coloured_objects():
    pixels = np.full((60, 120, 3), 128, np.uint8)
    pixels[10:50, 5:45] = (255, 0, 0)
    pixels[20:40, 70:110] = (0, 0, 255)
    boxes = [np.array(b.as_tuple()) for b in felzenszwalb_boxes(Image.fromarray(pixels), max_regions=6)]
    for target in ((5, 10, 45, 50), (70, 20, 110, 40)):  # within a pixel: the segmenter smooths edges first
        assert any(np.abs(b - target).max() <= 1 for b in boxes), (target, boxes)
