from setuptools import find_packages, setup

setup(
    name="retinanet_d2",
    version="0.1.0",
    description="Focal Loss for Dense Object Detection (RetinaNet) as a detectron2 extension",
    packages=find_packages(include=["retinanet_d2", "retinanet_d2.*"]),
    python_requires=">=3.8",
    extras_require={"onnx": ["onnx", "onnxruntime"]},
)
