"""``python -m datalflash``: the ``datalflash`` command."""

import sys

from datalflash.cli import main

sys.exit(main())
