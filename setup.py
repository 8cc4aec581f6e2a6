"""pip install . (into an environment that already has torch and detectron2: README, "Install").

install_requires: the packages retinanet_d2 imports itself, from requirements.txt's first block, their
pinned versions as lower bounds (the exact pins are what tools/setup_env.sh installs for CI; a library
must not downgrade a user's environment). OpenCV: an OpenCV distribution already installed is kept
(a second one would install a second cv2); else opencv-python-headless. torch, detectron2 and
detectron2's own dependencies are left to detectron2; the test runner and the ONNX packages are the
extras "test" and "onnx". The configs are installed as retinanet_d2/configs and found by name
(retinanet_d2.get_config_file)."""
import os
import re
from importlib import metadata

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
EXTRAS = {"test": ["pytest"], "onnx": ["onnx", "onnxruntime"]}
OPENCV = ("opencv-python", "opencv-contrib-python", "opencv-python-headless", "opencv-contrib-python-headless")


def installed_opencv():
    """The OpenCV distribution already installed, or None."""
    for name in OPENCV:
        try:
            metadata.version(name)
            return name
        except metadata.PackageNotFoundError:
            pass
    return None


def runtime_requirements():
    """requirements.txt's first block (up to the line about detectron2's own dependencies), '==' pins
    as '>=' bounds, OpenCV as installed_opencv() says."""
    with open(os.path.join(HERE, "requirements.txt"), encoding="utf-8") as f:
        text = f.read().split("# detectron2's own dependencies")[0]
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    requirements = [line.replace("==", ">=") for line in lines if line]
    opencv = installed_opencv()
    return [opencv if opencv and re.split("[=<>]", r)[0] in OPENCV else r for r in requirements]


setup(
    name="retinanet_d2",
    version="0.1.0",
    description="Focal Loss for Dense Object Detection (RetinaNet) as a detectron2 extension",
    packages=[*find_packages(include=["retinanet_d2", "retinanet_d2.*"]), "retinanet_d2.configs"],
    package_dir={"retinanet_d2.configs": "configs"},
    package_data={"retinanet_d2.configs": ["*.yaml", "*/*.yaml", "*/*.py"]},
    python_requires=">=3.8",
    install_requires=runtime_requirements(),
    extras_require=EXTRAS,
)
