"""tools/browse_dataset.py: a box drawn where the annotation puts it, as stored and after the
training resize (a uniform grey image: any drawn pixel differs from grey, nothing else does)."""
import cv2
import numpy as np
import pytest

from coco_files import box, image_record, write_coco
from helpers import INSTANT, load_tool

browse = load_tool("browse_dataset")
GREY = 128


@pytest.fixture
def dataset(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "grey.png"), np.full((100, 160, 3), GREY, np.uint8))
    return write_coco(tmp_path, [image_record(1, "grey.png", width=160, height=100)], [box(1, 1, [20, 30, 40, 20])]), images


def drawn_pixels(path):
    image = cv2.imread(str(path))
    return image, (image != GREY).any(axis=2)


@pytest.mark.parametrize("source,scale", [("annotation", 1), ("dataloader", 2)])
def test_the_box_is_drawn_where_it_is(tmp_path, dataset, source, scale):
    json_file, images = dataset
    out = tmp_path / "out"
    name = f"grey_{source}"  # a name per test: the registry lives as long as the process
    assert browse.main(["--config-file", INSTANT, "--dataset", name, str(json_file), str(images),
                        "--dataset-name", name, "--source", source, "--output", str(out),
                        "INPUT.MIN_SIZE_TRAIN", "(200,)", "INPUT.MAX_SIZE_TRAIN", "1000",
                        "INPUT.RANDOM_FLIP", "none"]) == 0
    image, drawn = drawn_pixels(out / "0000_grey.png")
    assert image.shape[:2] == (100 * scale, 160 * scale)
    x0, y0, x1, y1 = (v * scale for v in (20, 30, 60, 50))  # XYWH [20, 30, 40, 20] as XYXY, resized
    middle = (y0 + y1) // 2
    assert drawn[middle, x0] and drawn[middle, x1 - 1]  # left and right edges
    assert not drawn[middle, (x0 + x1) // 2]  # inside the box: no fill
    # Nothing above or right of the box (its label goes below its left corner).
    assert not drawn[: y0 - 3 * scale, :].any() and not drawn[:, x1 + 3 * scale:].any()


def test_an_input_image_is_never_overwritten(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "0000_a.png"):  # the drawing of a.png, the first image, would be 0000_a.png
        cv2.imwrite(str(images / name), np.full((40, 40, 3), GREY, np.uint8))
    json_file = write_coco(tmp_path, [image_record(1, "a.png", 40, 40), image_record(2, "0000_a.png", 40, 40)],
                           [box(1, 1, [5, 5, 10, 10]), box(2, 2, [5, 5, 10, 10])])
    before = (images / "0000_a.png").read_bytes()
    with pytest.raises(SystemExit):
        browse.main(["--config-file", INSTANT, "--dataset", "clash", str(json_file), str(images),
                     "--dataset-name", "clash", "--output", str(images)])
    assert sorted(p.name for p in images.iterdir()) == ["0000_a.png", "a.png"]
    assert (images / "0000_a.png").read_bytes() == before
