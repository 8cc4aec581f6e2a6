#!/usr/bin/env python
"""The paper's ablation grid (Table 1 (a)-(e), Appendix A): the one source of configs/ablations/.

    python tools/ablation_configs.py           # (re)write the leaf configs from GRID
    python tools/ablation_configs.py --check   # exit 1 naming every file that differs from GRID

Each row is one distinct setting over Base-Ablation.yaml (R50-FPN, 600 px, 1x; its loss is FL gamma 2,
alpha .25, its anchors 3 scales x 3 ratios) or Base-Ablation-R101.yaml. A row the paper repeats in
another table has one file: SAME_AS names it.
"""
import argparse
import os
import sys
from typing import Dict, List, Tuple

FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "ablations")
R50, R101 = "Base-Ablation.yaml", "Base-Ablation-R101.yaml"
CE = [("MODEL.RETINANET.FOCAL_LOSS_GAMMA", "0.0"), ("MODEL.RETINANET.FOCAL_LOSS_ALPHA", "-1.0")]  # plain CE
# Table 1(d)'s OHEM rows: (fg:bg ratio, NMS threshold) -> the paper's AP at batch 128, 256, 512 per image.
TABLE_1D_OHEM = {("plain", "0.7"): (31.1, 31.8, 30.6), ("plain", "0.5"): (32.8, 31.0, 27.6), ("1to3", "0.5"): (31.1, 28.3, 24.0)}


def _focal(gamma: float, alpha: float) -> List[Tuple[str, str]]:
    return [("MODEL.RETINANET.FOCAL_LOSS_GAMMA", f"{gamma}"), ("MODEL.RETINANET.FOCAL_LOSS_ALPHA", f"{alpha}")]


def _scale(size: int) -> List[Tuple[str, str]]:
    return [("INPUT.MIN_SIZE_TRAIN", f"({size},)"), ("INPUT.MAX_SIZE_TRAIN", f"{round(size * 5 / 3)}"),
            ("INPUT.MIN_SIZE_TEST", f"{size}"), ("INPUT.MAX_SIZE_TEST", f"{round(size * 5 / 3)}")]


def _grid() -> Dict[str, Tuple[str, str, List[Tuple[str, str]]]]:
    """file stem -> (comment, base file, [(dotted key, YAML value)])."""
    grid = {}
    for alpha in ("0.10", "0.25", "0.50", "0.75", "0.90", "0.99", "0.999"):
        grid[f"t1a_ce_alpha{alpha}"] = (f"Table 1(a): alpha-balanced CE (gamma 0), alpha {alpha}.", R50,
                                        _focal(0.0, float(alpha)))
    for gamma, alpha in ((0.1, 0.75), (0.2, 0.75), (0.5, 0.5), (1.0, 0.25), (2.0, 0.25), (5.0, 0.25)):
        grid[f"t1b_fl_gamma{gamma}_alpha{alpha:.2f}"] = (f"Table 1(b): focal loss, gamma {gamma}, alpha {alpha}.", R50,
                                                         _focal(gamma, alpha))
    for scales, ratios in ((1, 1), (2, 1), (3, 1), (1, 3), (2, 3), (4, 3)):
        aspect = "[[1.0]]" if ratios == 1 else "[[0.5, 1.0, 2.0]]"
        grid[f"t1c_anchors_{scales}scales_{ratios}ratios"] = (
            f"Table 1(c): {scales} scale(s) per octave x {ratios} aspect ratio(s) = {scales * ratios} anchors per location.",
            R50, [("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", aspect), ("MODEL.FOCAL_RETINANET.SCALES_PER_OCTAVE", f"{scales}")])
    for (ratio, nms), paper_ap in TABLE_1D_OHEM.items():
        for batch, ap in zip((128, 256, 512), paper_ap):
            grid[f"t1d_ohem_{ratio}_nms{nms}_batch{batch}_R101"] = (
                f"Table 1(d): OHEM {'without a fg:bg ratio' if ratio == 'plain' else '1:3'}, batch {batch} per image, "
                f"NMS {nms}, plain CE, R101 (the paper: {ap} AP).", R101,
                CE + [("MODEL.FOCAL_RETINANET.LOSS", '"ohem"'), ("MODEL.FOCAL_RETINANET.OHEM_BATCH_SIZE_PER_IMAGE", f"{batch}"),
                      ("MODEL.FOCAL_RETINANET.OHEM_FG_FRACTION", "-1.0" if ratio == "plain" else "0.25"),
                      ("MODEL.FOCAL_RETINANET.OHEM_NMS_THRESH", nms)])
    for depth, base in ((50, R50), (101, R101)):
        for size in (400, 500, 600, 700, 800):
            if (depth, size) != (50, 600):
                grid[f"t1e_R{depth}_{size}"] = (f"Table 1(e): R{depth}, {size} px train and test scale.", base,
                                                [] if size == 600 else _scale(size))
    for gamma, beta in ((1.0, 0.0), (2.0, 1.0), (4.0, 0.0), (4.0, 2.0)):
        grid[f"appA_fl_star_gamma{gamma}_beta{beta}"] = (
            f"Appendix A: FL* with gamma {gamma}, beta {beta}.", R50,
            [("MODEL.FOCAL_RETINANET.LOSS", '"focal_star"'), ("MODEL.FOCAL_RETINANET.STAR_GAMMA", f"{gamma}"),
             ("MODEL.FOCAL_RETINANET.STAR_BETA", f"{beta}")])
    return grid


GRID = _grid()
# Rows of the paper's tables that are another row's setting: (table, row) -> the file that holds it.
SAME_AS = {
    ("Table 1(b)", "gamma 0, alpha .75"): "t1a_ce_alpha0.75",
    ("Table 1(c)", "3 scales x 3 ratios"): "t1b_fl_gamma2.0_alpha0.25",
    ("Table 1(d)", "FL, R101"): "t1e_R101_600",
    ("Table 1(e)", "R50, 600 px"): "t1b_fl_gamma2.0_alpha0.25",
}


def render(comment: str, base: str, overrides: List[Tuple[str, str]]) -> str:
    """The YAML text of a leaf config: the comment, _BASE_, then the overrides nested by key."""
    lines = [f"# {comment}", f'_BASE_: "{base}"']
    written: List[str] = []
    for key, value in overrides:
        *path, last = key.split(".")
        common = 0
        while common < len(path) and common < len(written) and written[common] == path[common]:
            common += 1
        for depth in range(common, len(path)):
            lines.append("  " * depth + f"{path[depth]}:")
        lines.append("  " * len(path) + f"{last}: {value}")
        written = path
    return "\n".join(lines) + "\n"


def expected_files() -> Dict[str, str]:
    """file name -> text, for every row of GRID."""
    return {f"{stem}.yaml": render(*row) for stem, row in GRID.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    expected = expected_files()
    on_disk = {n for n in os.listdir(FOLDER) if n.startswith(("t1", "appA"))}
    if args.check:
        problems = [f"{n}: differs from GRID" for n in sorted(expected) if n in on_disk and
                    open(os.path.join(FOLDER, n), encoding="utf-8").read() != expected[n]]
        problems += [f"{n}: missing" for n in sorted(set(expected) - on_disk)]
        problems += [f"{n}: not in GRID" for n in sorted(on_disk - set(expected))]
        print("\n".join(problems) or f"{len(expected)} configs agree with GRID")
        return 1 if problems else 0
    for name, text in expected.items():
        with open(os.path.join(FOLDER, name), "w", encoding="utf-8") as f:
            f.write(text)
    for name in sorted(on_disk - set(expected)):
        print(f"not in GRID (left in place): {name}")
    print(f"wrote {len(expected)} configs into {FOLDER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
