"""Test setup: the embedded dataset is generated into a fresh folder for each test session."""
import os
import tempfile

# Before retinanet_d2 is imported (it registers the shapes splits under this root).
os.environ["DETECTRON2_DATASETS"] = tempfile.mkdtemp(prefix="retinanet_d2_tests_")
