"""The project's configs by name, as detectron2's ``model_zoo.get_config_file``: from the installed
package (``pip install .`` puts configs/ in it as retinanet_d2/configs) or, in a source checkout,
from the repository's configs/."""
import os
from typing import List

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_FOLDERS = (os.path.join(_PACKAGE, "configs"), os.path.join(os.path.dirname(_PACKAGE), "configs"))


def config_folder() -> str:
    """The folder the configs are found in (installed first, then the source checkout)."""
    for folder in _FOLDERS:
        if os.path.isfile(os.path.join(folder, "Base-RetinaNet.yaml")):
            return folder
    raise FileNotFoundError(f"retinanet_d2's configs are in none of {list(_FOLDERS)}: reinstall the package")


def list_configs() -> List[str]:
    """Names of every config, relative to the config folder (e.g. "lazy/retinanet_R50_FPN_1x.py")."""
    root = config_folder()
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root)
                  for f in files if f.endswith((".yaml", ".py")) and f != "__init__.py")


def find_config_file(path_or_name: str) -> str:
    """``path_or_name`` if it is a file, else the project's config of that name (so that an
    installed package's users can write --config-file retinanet_R50_FPN_1x.yaml anywhere);
    FileNotFoundError naming both places otherwise."""
    if os.path.isfile(path_or_name):
        return path_or_name
    shipped = os.path.join(config_folder(), path_or_name)
    if os.path.isfile(shipped):
        return shipped
    raise FileNotFoundError(f"config file {path_or_name}: no such file, and retinanet_d2 has no config of that "
                            f"name (it has: {', '.join(list_configs())})")


def get_config_file(name: str) -> str:
    """The path of the config ``name`` (e.g. "retinanet_R50_FPN_1x.yaml", "ablations/t1a_ce_alpha0.75.yaml");
    FileNotFoundError listing the configs there are."""
    path = os.path.join(config_folder(), name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"retinanet_d2 has no config {name!r}; it has: {', '.join(list_configs())}")
    return path
