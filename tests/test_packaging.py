"""pip install . : the wheel declares the packages the code imports (not torch, detectron2 or its
dependencies, not the test runner) and carries every config, which the installed package finds by name."""
import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

import retinanet_d2
from helpers import CONFIGS, REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel of a copy of the checkout without its build products (setuptools reuses ./build, which
    would carry files the checkout no longer has)."""
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        "build", ".venv*", "output", "datasets", ".git", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(folder)], check=True, capture_output=True, cwd=folder)
    (path,) = glob.glob(str(folder / "retinanet_d2-*.whl"))
    return path


def repository_configs():
    return sorted(os.path.relpath(os.path.join(d, f), CONFIGS) for d, _, files in os.walk(CONFIGS) for f in files
                  if f.endswith((".yaml", ".py")))


@pytest.mark.e2e
def test_the_wheel_declares_the_runtime_requirements_and_carries_every_config(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [line.split(": ", 1)[1] for line in archive.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist: ")]
    # The packages the code imports itself, at least at their pinned versions; OpenCV as installed here.
    opencv = next(r for r in requires if r.startswith("opencv"))
    assert [r for r in requires if "extra ==" not in r] == [
        "fvcore>=0.1.5.post20221221", "pycocotools>=2.0.11", opencv, "matplotlib>=3.10.7", "Pillow>=9.1",
        "numpy>=1.23", "tqdm>=4.67.1", "omegaconf>=2.3.0"]
    assert opencv == "opencv-python-headless"  # the one this venv has (requirements.txt), kept as it is
    assert sorted(r for r in requires if "extra ==" in r) == [
        'onnx; extra == "onnx"', 'onnxruntime; extra == "onnx"', 'pytest; extra == "test"']
    assert sorted(n[len("retinanet_d2/configs/"):] for n in names if n.startswith("retinanet_d2/configs/")) \
        == repository_configs()


@pytest.mark.e2e
def test_the_installed_package_finds_its_configs_by_name(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), wheel],
                   check=True, capture_output=True)
    script = ("import retinanet_d2; print(retinanet_d2.__file__); "
              "print(retinanet_d2.get_config_file('ablations/t1a_ce_alpha0.75.yaml')); "
              "print(retinanet_d2.load_config('retinanet_R50_FPN_1x.yaml').SOLVER.STEPS)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(site)))
    assert result.returncode == 0, result.stderr[-2000:]
    package, config, steps = result.stdout.split("\n")[:3]
    assert package == str(site / "retinanet_d2" / "__init__.py")
    assert config == str(site / "retinanet_d2" / "configs" / "ablations" / "t1a_ce_alpha0.75.yaml")
    assert steps == "(60000, 80000)"


def test_an_unknown_config_name_lists_the_configs():
    with pytest.raises(FileNotFoundError, match=r"no config 'nope.yaml'; it has: .*retinanet_R50_FPN_1x.yaml"):
        retinanet_d2.get_config_file("nope.yaml")
    with pytest.raises(FileNotFoundError, match=r"config file nope.yaml: no such file, and retinanet_d2 has no"):
        retinanet_d2.load_config("nope.yaml")
