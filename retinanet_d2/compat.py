"""Run-time differences between detectron2 versions (0.6, what the package registry has, and current
main, what most users have), bridged in one place. Install-time rewriting of the registry's sources
is tools/source_bridges.py's.
"""


def has_compiled_ops() -> bool:
    """True when the installed detectron2 has its compiled ops (an official build)."""
    from detectron2 import _C

    return not getattr(_C, "IS_PLACEHOLDER", False)


def create_ddp_model(model, **kwargs):
    """detectron2's ``create_ddp_model`` for a model on any device: ``model`` itself in one process,
    else DistributedDataParallel with ``kwargs``.

    detectron2 passes ``device_ids=[local rank]`` unless told otherwise, which DistributedDataParallel
    refuses for a CPU model (v0.6 had CUDA only; current main does the same on CPU); a CPU model gets
    ``device_ids=None``.
    """
    from detectron2.engine.defaults import create_ddp_model as detectron2_create_ddp_model

    if next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return detectron2_create_ddp_model(model, **kwargs)
