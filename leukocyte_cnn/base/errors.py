"""One-line errors for bad input, and the wrapper every script's ``__main__`` uses.

A researcher who points a script at the wrong folder should read one line naming the path and
the problem, not a 40-line TensorFlow traceback.
"""
from __future__ import annotations


class InputError(Exception):
    """Bad input the user can fix: a missing folder, an unreadable image, a wrong label.

    The message is one line and names the offending path first, e.g.
    ``data/x/Im001_1.tif: truncated image file``.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


