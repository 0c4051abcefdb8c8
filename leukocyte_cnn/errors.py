"""One-line errors for bad input, and the wrapper every script's ``__main__`` uses.

A researcher who points a script at the wrong folder should read one line naming the path and
the problem, not a 40-line TensorFlow traceback.
"""
from __future__ import annotations

import sys
from typing import Callable


class InputError(Exception):
    """Bad input the user can fix: a missing folder, an unreadable image, a wrong label.

    The message is one line and names the offending path first, e.g.
    ``data/x/Im001_1.tif: truncated image file``.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def run_main(main: Callable[[], object]) -> None:
    """Run ``main()``; turn an :class:`InputError` into ``error: <message>`` and exit code 2.

    First applies knob overrides from ``$LEUKOCYTE_KNOBS`` to the script (``__main__``), so
    ``main()`` runs as if those UPPER_CASE lines had been edited (``leukocyte_cnn.knobs``).
    """
    try:
        from .knobs import apply_environment_overrides

        apply_environment_overrides(sys.modules["__main__"])
        main()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished folds are kept; run the same command again to resume",
              file=sys.stderr)
        sys.exit(130)
