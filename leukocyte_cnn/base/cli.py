"""The wrapper every script's ``__main__`` uses: one line for bad input, exit codes.

A researcher who points a script at the wrong folder should read one line naming the path and
the problem, not a 40-line TensorFlow traceback.
"""
from __future__ import annotations

import sys
from typing import Callable

from leukocyte_cnn.base.errors import InputError


def run_main(main: Callable[[], object]) -> None:
    """Run ``main()``; turn an :class:`InputError` into ``error: <message>`` and exit code 2.

    First applies knob overrides from ``$LEUKOCYTE_KNOBS`` to the script (``__main__``), so
    ``main()`` runs as if those UPPER_CASE lines had been edited (``leukocyte_cnn.base.knobs``).
    """
    try:
        from leukocyte_cnn.base.knobs import apply_environment_overrides

        apply_environment_overrides(sys.modules["__main__"])
        main()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished folds are kept; run the same command again to resume",
              file=sys.stderr)
        sys.exit(130)
