import sys

from datalflash.cli import main

sys.exit(main())
