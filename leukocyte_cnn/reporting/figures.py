"""Saving figures: atomically, closed after, and with their titles readable by program.

Every figure of a run folder is written by :func:`save_figure`, so a half-written PNG is never
seen by a report that embeds the folder's figures, and a PNG's ``Title`` text chunk holds the
titles a reader sees first (:func:`figure_titles`): labels such as LEAKY can be checked
without looking at the picture.
"""
from __future__ import annotations

import os
from pathlib import Path

from leukocyte_cnn.base.io import atomic_path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_titles(fig) -> str:
    """The figure's title and its axes' titles, ``" | "``-joined (what a reader sees first)."""
    texts = [fig._suptitle.get_text()] if getattr(fig, "_suptitle", None) else []
    for ax in fig.get_axes():
        texts += [ax.get_title(loc) for loc in ("left", "center", "right")]
    return " | ".join(t for t in texts if t)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure atomically and close it. A PNG carries its titles in its
    ``Title`` text chunk (:func:`figure_titles`)."""
    import matplotlib.pyplot as plt

    fmt = Path(path).suffix[1:]
    metadata = {"Title": figure_titles(fig)} if fmt.lower() == "png" else None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=fmt, metadata=metadata)
    plt.close(fig)
    return Path(path)
