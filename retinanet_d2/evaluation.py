"""COCOEvaluator as train_net.py builds it: scoring as many detections per image as the model keeps
(TEST.DETECTIONS_PER_IMAGE; detectron2's default scores the first 100), and followed by the error
analysis (analysis/error_report.py) in OUTPUT_DIR/inference/errors_<dataset>/ unless
MODEL.FOCAL_RETINANET.ERROR_ANALYSIS is off. LazyConfig: ``L(AnalyzedCOCOEvaluator)(...)`` as
dataloader.evaluator (configs/lazy/)."""
import json
import logging
import os

from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

from .config import DEFAULTS, retinanet_node

RESULTS_FILE = "coco_instances_results.json"  # what COCOEvaluator writes into its output folder
_NODE = DEFAULTS.MODEL.FOCAL_RETINANET


class AnalyzedCOCOEvaluator(COCOEvaluator):
    """COCOEvaluator whose ``evaluate`` also writes the error analysis of the detections it scored."""

    def __init__(self, dataset_name: str, output_dir: str, max_dets_per_image: int,
                 score_thresh: float = _NODE.ERROR_ANALYSIS_SCORE_THRESH, worst: int = _NODE.ERROR_ANALYSIS_WORST_IMAGES):
        """
        Args:
            dataset_name, output_dir, max_dets_per_image: COCOEvaluator's.
            score_thresh, worst: the analysis's score threshold and number of images drawn.
        """
        super().__init__(dataset_name, output_dir=output_dir, max_dets_per_image=max_dets_per_image)
        self.dataset_name, self.analysis = dataset_name, {"score_thresh": score_thresh, "worst": worst,
                                                          "max_dets": max_dets_per_image}
        self.analysis_dir = os.path.join(output_dir, f"errors_{dataset_name}")

    def evaluate(self, img_ids=None):
        results = super().evaluate(img_ids)
        if comm.is_main_process() and "bbox" in results:  # the results file was written just now
            from .analysis.error_report import analyze_dataset_errors  # matplotlib: only when it runs

            with open(os.path.join(self._output_dir, RESULTS_FILE), encoding="utf-8") as f:
                detections = json.load(f)
            os.makedirs(self.analysis_dir, exist_ok=True)
            analyze_dataset_errors(self.dataset_name, detections, self.analysis_dir, **self.analysis)
            logging.getLogger(__name__).info(f"error analysis of {self.dataset_name}: {self.analysis_dir}")
        return results


def build_coco_evaluator(cfg, dataset_name: str, output_dir: str) -> COCOEvaluator:
    """The evaluator of ``dataset_name`` for a yacs config: with the analysis unless it is off."""
    node = retinanet_node(cfg)
    if not node.ERROR_ANALYSIS:
        return COCOEvaluator(dataset_name, output_dir=output_dir, max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)
    return AnalyzedCOCOEvaluator(dataset_name, output_dir, cfg.TEST.DETECTIONS_PER_IMAGE,
                                 node.ERROR_ANALYSIS_SCORE_THRESH, node.ERROR_ANALYSIS_WORST_IMAGES)
