#!/usr/bin/env bash
# Create or reuse a venv ($VENV, default .venv/ in the repository root) with torch, detectron2, the
# pinned dependencies (requirements.txt) and this package in editable mode. Installs only from the
# package registry, or builds detectron2 from a source archive when D2_SOURCE names one:
#   D2_SOURCE=../shared/vendor/detectron2-main-02b5c4e2.tar.gz VENV=.venv-official bash tools/setup_env.sh
# The compiled wheel built from D2_SOURCE is cached in $D2_WHEEL_CACHE (default ~/.cache/retinanet_d2/wheels),
# keyed by the archive's checksum, torch's version and Python's, so a second venv reuses it.
# A second run with nothing changed does nothing: the stamp records what the last setup installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
D2_SOURCE="${D2_SOURCE:-}"
D2_WHEEL_CACHE="${D2_WHEEL_CACHE:-$HOME/.cache/retinanet_d2/wheels}"
PY="$VENV/bin/python"
STAMP="$VENV/.retinanet_d2-setup"
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"   # the builds this machine kind has on disk
D2_SDIST="pb1-detectron2==0.6"                    # detectron2 v0.6 Python sources, no compiled ops
PIP_FOR_D2="pip==25.1"                            # pip 26 refuses the sdist's GitHub extra
# detectron2's model_zoo imports pkg_resources, which setuptools removed in version 82.
SETUPTOOLS_WITH_PKG_RESOURCES="setuptools<82"

if [[ -n "$D2_SOURCE" && ! -f "$D2_SOURCE" ]]; then
    echo "[setup] D2_SOURCE=$D2_SOURCE: no such file (a detectron2 source archive, .tar.gz)" >&2
    exit 1
fi
source_id="${D2_SOURCE:+$(sha256sum < "$D2_SOURCE")}"
want="$(cat requirements.txt setup.py tools/setup_env.sh tools/source_bridges.py | sha256sum) $source_id"
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

install_d2_from_source() {  # build (or reuse) the compiled wheel of the archive $D2_SOURCE
    local key wheel_dir work
    key="$(echo "$source_id $("$PY" -c 'import sys, torch; print(torch.__version__, sys.version_info[:2])')" | sha256sum | cut -c1-16)"
    wheel_dir="$D2_WHEEL_CACHE/$key"
    if ! ls "$wheel_dir"/detectron2-*.whl >/dev/null 2>&1; then
        echo "[setup] building detectron2 with its compiled ops from $D2_SOURCE (about 4 minutes on 2 cores)"
        work="$(mktemp -d)"
        tar -xzf "$D2_SOURCE" -C "$work"
        mkdir -p "$wheel_dir"
        FORCE_CUDA="${FORCE_CUDA:-0}" "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps \
            --no-build-isolation -w "$work/wheel" "$work"/*/
        mv "$work"/wheel/detectron2-*.whl "$wheel_dir/"
        rm -rf "$work"
    fi
    echo "[setup] installing $(ls "$wheel_dir"/detectron2-*.whl)"
    pip_install --force-reinstall --no-deps "$wheel_dir"/detectron2-*.whl
    pip_install "$wheel_dir"/detectron2-*.whl  # its dependencies (black, for LazyConfig); pinned ones stay
}

official_d2='import detectron2._C as c; assert not getattr(c, "IS_PLACEHOLDER", False)'
if [[ -n "$D2_SOURCE" ]]; then
    install_d2_from_source
elif "$PY" -c "$official_d2" 2>/dev/null; then
    echo "[setup] using the installed official detectron2: $("$PY" -c 'import detectron2; print(detectron2.__version__, detectron2.__file__)')"
else
    echo "[setup] no official detectron2 found: installing $D2_SDIST (Python sources) with retinanet_d2's bridges"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    "$PY" -m pip download --quiet --no-deps --no-build-isolation --no-binary :all: -d "$work" "$D2_SDIST"
    tar -xzf "$work"/pb1-detectron2-0.6.tar.gz -C "$work"
    "$PY" tools/source_bridges.py "$work/pb1-detectron2-0.6"
    pip_install --no-deps --no-build-isolation --use-pep517 --force-reinstall "$work/pb1-detectron2-0.6"
fi

# An official detectron2 (current main too) imports pkg_resources in its model_zoo: keep a setuptools
# that has it, in this venv only (the registry's sources are bridged instead).
if ! "$PY" -c "import pkg_resources" 2>/dev/null && grep -qs "import pkg_resources" \
        "$("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')/model_zoo/model_zoo.py"; then
    echo "[setup] this detectron2 imports pkg_resources (removed in setuptools 82): installing '$SETUPTOOLS_WITH_PKG_RESOURCES'"
    pip_install "$SETUPTOOLS_WITH_PKG_RESOURCES"
fi

pip_install --no-deps --no-build-isolation --use-pep517 -e .
check='import detectron2.modeling, detectron2.engine, detectron2.evaluation, detectron2.model_zoo, retinanet_d2'
if ! "$PY" -c "$check" 2>"$VENV/.import-error"; then
    echo "[setup] the detectron2 in $VENV is not usable: '$check' failed with" >&2
    tail -n 5 "$VENV/.import-error" >&2
    echo "[setup] install a detectron2 that imports on this torch, or remove $VENV to start again" >&2
    exit 1
fi
echo "$want" > "$STAMP"
echo "[setup] ready in $VENV: $("$PY" -c 'import torch, detectron2; print("torch", torch.__version__, "| detectron2", detectron2.__version__, detectron2.__file__)')"
