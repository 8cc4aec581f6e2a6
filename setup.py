"""pip install . (into an environment that already has torch and detectron2: README, "Install").

install_requires: requirements.txt's runtime packages as lower bounds (its exact pins are what
tools/setup_env.sh installs for CI; a library must not downgrade a user's environment); torch and
detectron2 are not on that list (installed first, as README explains); the test runner and the ONNX
packages are the extras "test" and "onnx". The configs are installed as retinanet_d2/configs and
found by name (retinanet_d2.get_config_file)."""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
EXTRAS = {"test": ["pytest"], "onnx": ["onnx", "onnxruntime"]}


def runtime_requirements():
    """requirements.txt's lines without comments and extras, '==' pins turned into '>=' bounds."""
    with open(os.path.join(HERE, "requirements.txt"), encoding="utf-8") as f:
        lines = [line.split("#")[0].strip() for line in f]
    extras = {name for names in EXTRAS.values() for name in names}
    return [line.replace("==", ">=") for line in lines if line and re.split("[=<>]", line)[0] not in extras]


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
