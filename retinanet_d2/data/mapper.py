"""``FileNamingDatasetMapper``: detectron2's DatasetMapper whose errors name the image file."""
from detectron2.data import DatasetMapper


class DatasetRecordError(RuntimeError):
    """An image or its annotations failed in the data loader; the message names the file."""


class FileNamingDatasetMapper(DatasetMapper):
    """DatasetMapper (same arguments, same output) that re-raises any failure of a record as a
    DatasetRecordError naming its ``file_name`` (a file damaged after the dataset check, an
    annotation detectron2 refuses), so that an error hours into training says which file it was."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except Exception as error:
            raise DatasetRecordError(
                f"{dataset_dict.get('file_name', '<no file_name>')}: {type(error).__name__}: {error}"
            ) from error
