import sys

from edgevt.cli import main

sys.exit(main())
