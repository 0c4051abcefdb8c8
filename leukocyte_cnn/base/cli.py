"""The wrapper every script's ``__main__`` uses: one line for bad input, exit codes.

A researcher who points a script at the wrong folder should read one line naming the path and
the problem, not a 40-line TensorFlow traceback.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

from leukocyte_cnn.base.errors import InputError


def run_main(main: Callable[[], object]) -> None:
    """Run ``main()``; turn an :class:`InputError` into ``error: <message>`` and exit code 2.

    First takes ``$LEUKOCYTE_KNOBS`` for the script (``__main__``), checked against its knobs,
    so an unknown knob or a wrong type stops the script in one line before anything runs;
    ``knobs.resolve_settings`` then applies it (``leukocyte_cnn.base.knobs``).
    """
    try:
        from leukocyte_cnn.base.knobs import take_environment_overrides

        take_environment_overrides(sys.modules["__main__"])
        main()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished folds are kept; run the same command again to resume",
              file=sys.stderr)
        sys.exit(130)
