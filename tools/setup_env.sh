#!/usr/bin/env bash
# Create or reuse .venv/ in the repository root with torch, detectron2, the pinned dependencies
# (requirements.txt) and this package in editable mode. Installs only from the package registry.
# A second run with nothing changed does nothing: the stamp records what the last setup installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
PY="$VENV/bin/python"
STAMP="$VENV/.retinanet_d2-setup"
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"   # the builds this machine kind has on disk
D2_SDIST="pb1-detectron2==0.6"                    # detectron2 v0.6 Python sources, no compiled ops
PIP_FOR_D2="pip==25.1"                            # pip 26 refuses the sdist's GitHub extra

want="$(cat requirements.txt setup.py tools/setup_env.sh retinanet_d2/source_bridges.py | sha256sum)"
if [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

[[ -x "$PY" ]] || "$PYTHON" -m venv "$VENV"
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }

pip_install "$PIP_FOR_D2" setuptools wheel
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    echo "[setup] installing $TORCH_PINS (keeps a torch that is already installed)"
    pip_install $TORCH_PINS
fi
pip_install -r requirements.txt

official_d2='import detectron2._C as c, detectron2.modeling; assert not getattr(c, "IS_PLACEHOLDER", False)'
if "$PY" -c "$official_d2" 2>/dev/null; then
    echo "[setup] using the installed official detectron2: $("$PY" -c 'import detectron2; print(detectron2.__version__, detectron2.__file__)')"
else
    echo "[setup] no official detectron2 found: installing $D2_SDIST (Python sources) with retinanet_d2's bridges"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    "$PY" -m pip download --quiet --no-deps --no-build-isolation --no-binary :all: -d "$work" "$D2_SDIST"
    tar -xzf "$work"/pb1-detectron2-0.6.tar.gz -C "$work"
    "$PY" retinanet_d2/source_bridges.py "$work/pb1-detectron2-0.6"
    pip_install --no-deps --no-build-isolation --use-pep517 --force-reinstall "$work/pb1-detectron2-0.6"
fi

pip_install --no-deps --no-build-isolation --use-pep517 -e .
"$PY" -c "import detectron2.modeling, detectron2.engine, detectron2.evaluation, detectron2.model_zoo, retinanet_d2"
echo "$want" > "$STAMP"
echo "[setup] ready: $("$PY" -c 'import torch, detectron2; print("torch", torch.__version__, "| detectron2", detectron2.__version__)')"
