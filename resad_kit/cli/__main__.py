"""``python -m resad_kit.cli …``: the ``resad-kit`` command (e.g. under ``torchrun -m``)."""

from resad_kit.cli import main

raise SystemExit(main())
