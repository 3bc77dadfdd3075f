import sys

from fond.cli import main

sys.exit(main())
