"""Test setup: the embedded dataset is generated into a fresh folder for each test session and
removed when the session ends; the checkout's lab/ (benchmark, study runner) is importable."""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Before retinanet_d2 is imported (it registers the shapes splits under this root).
DATASETS_ROOT = tempfile.mkdtemp(prefix="retinanet_d2_tests_")
os.environ["DETECTRON2_DATASETS"] = DATASETS_ROOT


def pytest_unconfigure(config):
    """The generated images (~220 MB) are rebuilt by every session: nothing in them is kept."""
    shutil.rmtree(DATASETS_ROOT)
