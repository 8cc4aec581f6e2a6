"""The project's lab bench, outside the installed library: the side-by-side benchmark against
detectron2's RetinaNet (benchmark.py), the settings x seeds study runner (study.py) and the backbone
pretraining its configs use (pretrain.py). Used by tools/ and the tests, from a checkout."""
