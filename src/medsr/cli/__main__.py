import sys

from medsr.cli import main

sys.exit(main())
