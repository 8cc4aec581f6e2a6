"""Test setup: the embedded dataset is generated into a fresh folder for each test session; the
checkout's lab/ (benchmark, study runner) is importable."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Before retinanet_d2 is imported (it registers the shapes splits under this root).
os.environ["DETECTRON2_DATASETS"] = tempfile.mkdtemp(prefix="retinanet_d2_tests_")
