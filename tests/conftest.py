"""Test setup: the embedded dataset is generated into a fresh folder for each test session and
removed when the session ends; the checkout's root (train_net.py) is importable.

Two tiers: tests marked ``e2e`` start processes (train_net.py or a tool as a command, several
training processes); the rest run in this process. ``make test`` runs both, ``make test-fast`` the
second alone. A test that starts a process without the marker fails, so the fast tier stays fast."""
import multiprocessing.process
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Before retinanet_d2 is imported (it registers the shapes splits under this root).
DATASETS_ROOT = tempfile.mkdtemp(prefix="retinanet_d2_tests_")
os.environ["DETECTRON2_DATASETS"] = DATASETS_ROOT


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: starts processes (train_net.py or a tool as a command, several workers)")


@pytest.fixture(autouse=True)
def _processes_only_in_e2e_tests(request, monkeypatch):
    """Outside ``e2e`` tests, starting a process (subprocess, multiprocessing) fails the test."""
    if request.node.get_closest_marker("e2e"):
        return

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a process: mark it @pytest.mark.e2e")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)


@pytest.fixture(autouse=True)
def _logging_as_it_was():
    """Each test ends with detectron2's loggers as a fresh process has them (helpers.reset_logging)."""
    yield
    from helpers import reset_logging

    reset_logging()


def pytest_unconfigure(config):
    """The generated images (~220 MB) are rebuilt by every session: nothing in them is kept."""
    shutil.rmtree(DATASETS_ROOT)
