"""Keeping the best checkpoint of a training run by an evaluation metric (``model_best.pth``)."""
from detectron2.engine.hooks import BestCheckpointer

BEST_FILE_PREFIX = "model_best"


class ResumableBestCheckpointer(BestCheckpointer):
    """detectron2's BestCheckpointer (after each evaluation, ``model_best.pth`` is rewritten when the
    metric improved), whose best value and iteration are part of the trainer's checkpoint: a resumed
    run replaces model_best.pth only with a better model than the one before the resume."""

    def __init__(self, eval_period: int, checkpointer, val_metric: str, mode: str = "max"):
        """
        Args:
            eval_period: iterations between evaluations (TEST.EVAL_PERIOD / train.eval_period).
            checkpointer: what saves model_best.pth (the run's RetinaNetCheckpointer).
            val_metric: key of the metric in the event storage, e.g. "bbox/AP".
            mode: "max" or "min".
        """
        super().__init__(eval_period, checkpointer, val_metric, mode=mode, file_prefix=BEST_FILE_PREFIX)

    def state_dict(self):
        return {} if self.best_metric is None else {"best_metric": self.best_metric, "best_iter": self.best_iter}

    def load_state_dict(self, state_dict):
        self.best_metric, self.best_iter = state_dict["best_metric"], state_dict["best_iter"]
