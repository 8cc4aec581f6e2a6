"""``add_retinanet_config``: the one config node this project adds to detectron2's defaults.

Keys detectron2 already has (``MODEL.RETINANET.*``, ``MODEL.ANCHOR_GENERATOR.*``, ``MODEL.FPN.*``,
``SOLVER.*``, ``TEST.DETECTIONS_PER_IMAGE``) keep their meaning; only what detectron2 lacks lives here.
``DEFAULTS`` (detectron2's defaults plus this node) is the one source of every default: the modules'
keyword defaults read it, and ``retinanet_node`` gives its node to configs that lack it (a plain
detectron2 ``get_cfg()`` that only names ``FocalRetinaNet``).
"""
import contextlib
from typing import Dict, Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .config_files import find_config_file


@contextlib.contextmanager
def naming_config_keys(keys: Dict[str, str]):
    """On a config path: a ValueError that a config-free module raises about one of its arguments (its
    message begins with the argument's name) is raised again beginning with the config key the
    argument came from, ``keys[argument]`` (modules name their own arguments; only the config path
    knows the keys)."""
    try:
        yield
    except ValueError as error:
        message = str(error)
        argument = next((a for a in keys if message.startswith(a + " ")), None)
        if argument is None:
            raise
        raise ValueError(keys[argument] + message[len(argument):]) from error


def add_retinanet_config(cfg: CN) -> CN:
    """Add ``MODEL.FOCAL_RETINANET`` to ``cfg`` in place and return it. Idempotent."""
    if "FOCAL_RETINANET" in cfg.MODEL:
        return cfg
    node = cfg.MODEL.FOCAL_RETINANET = CN()
    # Classification loss (modeling/losses/dense.py): "focal" (FL, alpha/gamma from MODEL.RETINANET.FOCAL_LOSS_*; gamma 0 is
    # alpha-balanced CE), "focal_star" (FL*, paper Appendix A, with STAR_GAMMA / STAR_BETA) or
    # "ohem" (Table 1(d): the FL of FOCAL_LOSS_* -- plain CE with alpha -1, gamma 0 -- on the
    # OHEM-selected anchors only, normalised by their number).
    node.LOSS = "focal"
    # FL*'s gamma and beta: loss = -log(sigmoid(gamma * x_t + beta)) / gamma.
    node.STAR_GAMMA = 2.0
    node.STAR_BETA = 1.0
    # OHEM: anchors kept per image, largest foreground share (-1: none; 0.25 is the paper's 1:3) and
    # the NMS IoU threshold over anchors scored by their loss.
    node.OHEM_BATCH_SIZE_PER_IMAGE = 128
    node.OHEM_FG_FRACTION = -1.0
    node.OHEM_NMS_THRESH = 0.7
    # Weight m of the classification loss of background anchors that overlap no ground-truth box
    # (best IoU 0; every anchor of an image without boxes): m times as much object-free background
    # at the same compute, the normaliser unchanged. 1 is the paper's loss; focal and focal_star only.
    node.FAR_NEGATIVE_WEIGHT = 1.0
    # Input of the P6 conv of the FPN top block: "res5" (C5, the paper) or "p5" (torchvision v1).
    node.P6_INPUT = "res5"
    # Anchors in the paper's terms, used by ANCHOR_GENERATOR.NAME = "OctaveAnchorGenerator":
    # sizes on a level of stride s are OCTAVE_BASE_SCALE * s * 2**(i / SCALES_PER_OCTAVE),
    # i = 0..SCALES_PER_OCTAVE-1; aspect ratios come from MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS.
    node.OCTAVE_BASE_SCALE = 4.0
    node.SCALES_PER_OCTAVE = 3
    # Rounding of the cell anchors, for models converted from other projects: "" (none, the
    # paper), "torchvision" or "detectron" (see modeling/anchors.py).
    node.ANCHOR_ROUNDING = ""
    # Largest number of ground-truth boxes whose IoU with all anchors is computed at once; bounds
    # the memory of anchor assignment on images with thousands of boxes.
    node.MATCHER_CHUNK_BOXES = 256
    # Score threshold of each level of MODEL.RETINANET.IN_FEATURES at test time; empty: the one
    # MODEL.RETINANET.SCORE_THRESH_TEST on every level. Detectron takes 0.0 on its last level.
    node.LEVEL_SCORE_THRESH_TEST = []
    # Clip decoded boxes to the image before NMS (torchvision and Detectron do; detectron2 clips
    # only the final detections).
    node.CLIP_BOXES_BEFORE_NMS = False
    # Mixed precision: the autocast dtype of SOLVER.AMP.ENABLED training and of TEST_AMP inference,
    # "float16" or "bfloat16"; "" picks float16 on CUDA (detectron2's AMP) and bfloat16 on CPU.
    node.AMP_DTYPE = ""
    # Run inference (--eval-only, tools/predict.py) under autocast in AMP_DTYPE; detections stay
    # float32 (scores and boxes are computed from upcast predictions).
    node.TEST_AMP = False
    # Keep the model's weights (and so its activations) in the channels_last (NHWC) memory layout, which CPU
    # (oneDNN) and GPU (tensor core) convolutions prefer; outputs equal the default layout's to the
    # precision's rounding (docs/speed.md has the measured speed of both).
    node.CHANNELS_LAST = False
    # With TEST.EVAL_PERIOD > 0, training keeps OUTPUT_DIR/model_best.pth: the weights of the evaluation
    # with the best BEST_METRIC (a key of the evaluation results, e.g. "bbox/AP50"; "" keeps none),
    # highest for BEST_MODE "max", lowest for "min".
    node.BEST_METRIC = "bbox/AP"
    node.BEST_MODE = "max"
    # After each COCO evaluation, OUTPUT_DIR/inference/errors_<dataset>/ (analysis/error_report.py):
    # per-class metrics, precision / recall / F1 and a confusion matrix of the detections scoring at
    # least ERROR_ANALYSIS_SCORE_THRESH, PR curves, and the ERROR_ANALYSIS_WORST_IMAGES images with the
    # most errors drawn.
    node.ERROR_ANALYSIS = True
    node.ERROR_ANALYSIS_SCORE_THRESH = 0.5
    node.ERROR_ANALYSIS_WORST_IMAGES = 20
    # Every VALIDATION_LOSS_PERIOD iterations (0: never) and after the last, the losses on DATASETS.TEST
    # logged as validation_loss, validation_loss_cls, validation_loss_box_reg (validation_loss.py);
    # detectron2's writers write every 20 iterations, so a multiple of 20 logs every value.
    node.VALIDATION_LOSS_PERIOD = 0
    # Sliced inference for large images (modeling/sliced.py): with TILE_SIZE > 0, evaluation and the
    # Predictor run the model on square tiles of TILE_SIZE pixels of its input (after the test resize;
    # INPUT.MIN_SIZE_TEST 0 keeps the image's own size) overlapping by TILE_OVERLAP pixels (>= the
    # largest object, which is then seen whole by one tile), TILE_BATCH_SIZE tiles per forward pass,
    # and merge their detections into the image's. 0: whole images.
    node.TILE_SIZE = 0
    node.TILE_OVERLAP = 128
    node.TILE_BATCH_SIZE = 4
    return cfg


DEFAULTS = add_retinanet_config(get_cfg())
DEFAULTS.freeze()


def retinanet_node(cfg: CN) -> CN:
    """``cfg.MODEL.FOCAL_RETINANET``, or the default node where ``cfg`` has none."""
    return cfg.MODEL.FOCAL_RETINANET if "FOCAL_RETINANET" in cfg.MODEL else DEFAULTS.MODEL.FOCAL_RETINANET


def load_config(config_file: str, opts: Sequence[str] = ()) -> CN:
    """detectron2's defaults plus this node, merged with ``config_file`` (a path, or the name of one
    of the project's configs: config_files.find_config_file) and then ``opts``
    (``[KEY, VALUE, ...]``, as on a command line); not frozen."""
    cfg = add_retinanet_config(get_cfg())
    cfg.merge_from_file(find_config_file(config_file))
    cfg.merge_from_list(list(opts))
    return cfg
