"""The dataset check before training (retinanet_d2/data/checks.py): every problem of a hand-made COCO
dataset named at once, with its file or annotation id; boxes that training drops counted; a whole
image never flagged; a record that fails in the data loader names its file."""
import logging

import pytest

from detectron2.data import MetadataCatalog

from coco_files import box, broken_image_files, image_record, write_coco, write_image

from retinanet_d2.data import check_dataset_files
from retinanet_d2.data.checks import DatasetError, check_coco_dataset, image_problem
from retinanet_d2.data.mapper import DatasetRecordError, FileNamingDatasetMapper


def test_missing_truncated_and_garbage_images_are_named_together(tmp_path):
    names = broken_image_files(tmp_path)
    json_file = write_coco(tmp_path, [image_record(i + 1, n) for i, n in enumerate(names)], [])
    with pytest.raises(DatasetError) as raised:
        check_coco_dataset(str(json_file), str(tmp_path))
    message = str(raised.value)
    assert "3 bad images" in message
    assert f"{tmp_path / 'missing.jpg'}: missing" in message
    assert f"{tmp_path / 'truncated.jpg'}: unreadable (OSError: image file is truncated" in message
    assert f"{tmp_path / 'garbage.jpg'}: unreadable (UnidentifiedImageError" in message
    assert "good.jpg" not in message


def test_whole_images_pass_also_with_bytes_after_the_end_marker(tmp_path):
    write_image(tmp_path / "a.png")
    padded = write_image(tmp_path / "b.jpg").read_bytes() + b"\x00" * 200  # some cameras pad their JPEGs
    (tmp_path / "b.jpg").write_bytes(padded)
    assert image_problem(str(tmp_path / "a.png"), 30, 40) is None
    assert image_problem(str(tmp_path / "b.jpg"), 30, 40) is None
    assert image_problem(str(tmp_path / "a.png"), 40, 30) == "is 30x40, the JSON says 40x30"


def test_records_problems_are_named_by_annotation_id(tmp_path):
    write_image(tmp_path / "a.png")
    images = [image_record(1, "a.png"), image_record(1, "a.png")]
    annotations = [
        box(7, 1, [1, 2, 3]),  # three numbers
        box(8, 1, [1, 2, float("nan"), 4]),
        box(9, 1, [1, 2, 3, 4], category_id=5),
        box(10, 2, [1, 2, 3, 4]),  # no image 2
        box(10, 1, [1, 2, 3, 4]),
    ]
    json_file = write_coco(tmp_path, images, annotations)
    with pytest.raises(DatasetError) as raised:
        check_coco_dataset(str(json_file), str(tmp_path))
    message = str(raised.value)
    assert "1 duplicate image ids: id=1 (2 times)" in message
    assert "1 duplicate annotation ids: id=10 (2 times)" in message
    assert "annotation id=7 (image_id=1): bbox [1, 2, 3] is not [x, y, width, height]" in message
    assert "annotation id=8 (image_id=1): bbox [1, 2, nan, 4] has a value that is not a finite number" in message
    assert "annotation id=9 (image_id=1): category_id=5" in message
    assert "1 annotations of images not in 'images': annotation id=10 (image_id=2)" in message


def test_boxes_that_training_drops_are_counted_in_a_warning(tmp_path, caplog):
    write_image(tmp_path / "a.png")  # 30 wide, 40 high
    annotations = [
        box(1, 1, [1, 2, 3, 4]),  # kept
        box(2, 1, [5, 5, -3, 4]),  # negative width
        box(3, 1, [5, 5, 0, 4]),  # no width
        box(4, 1, [35, 5, 4, 4]),  # right of the image
        box(5, 1, [-10, 5, 12, 4]),  # partly outside: clipped, kept
    ]
    json_file = write_coco(tmp_path, [image_record(1, "a.png")], annotations)
    with caplog.at_level(logging.WARNING, logger="retinanet_d2.data.checks"):
        counts = check_coco_dataset(str(json_file), str(tmp_path))
    assert counts == {"images": 1, "annotations": 5, "dropped_boxes": 3}
    assert "training drops 3 of 5 boxes" in caplog.text
    assert "annotation id=2 (image_id=1): [5, 5, -3, 4]" in caplog.text


def test_invalid_json_and_missing_categories_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"bad.json: not valid JSON"):
        check_coco_dataset(str(bad), str(tmp_path))
    json_file = write_coco(tmp_path, [], [], categories=())
    with pytest.raises(DatasetError, match=r"annotations.json .*\n  1 missing categories: no 'categories'"):
        check_coco_dataset(str(json_file), str(tmp_path))


def test_registered_dataset_is_checked_when_its_files_are(tmp_path):
    write_image(tmp_path / "a.png")
    json_file = write_coco(tmp_path, [image_record(1, "a.png"), image_record(2, "gone.png")], [])
    MetadataCatalog.get("test_checked_dataset").set(json_file=str(json_file), image_root=str(tmp_path))
    with pytest.raises(DatasetError, match=r"(?s)dataset 'test_checked_dataset': .*gone.png: missing"):
        check_dataset_files("test_checked_dataset")


def test_a_record_that_fails_in_the_mapper_names_its_file(tmp_path):
    path = tmp_path / "damaged_later.jpg"
    path.write_bytes(b"\xff\xd8 not a jpeg")
    mapper = FileNamingDatasetMapper(is_train=False, augmentations=[], image_format="BGR")
    with pytest.raises(DatasetRecordError, match=rf"{path}: "):
        mapper({"file_name": str(path), "height": 4, "width": 4, "image_id": 1})
