"""``python -m zmlx.bench`` is ``zmlx-bench``."""

from .cli import main

raise SystemExit(main())
