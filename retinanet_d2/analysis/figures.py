"""Figures without pyplot: matplotlib's Figure objects draw and save without a GUI backend, so that
importing or running an analysis never changes the user's matplotlib backend."""
from matplotlib.figure import Figure

from ..atomic import atomic_path


def save_figure(figure: Figure, path: str, dpi: int = 120) -> None:
    """Lay ``figure`` out and write it to ``path`` (format by its ending) atomically."""
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi)


def new_figure(rows: int = 1, columns: int = 1, figsize=None):
    """(Figure, axes) as pyplot.subplots gives them, without pyplot."""
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(rows, columns)
