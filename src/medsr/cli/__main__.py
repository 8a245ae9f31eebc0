import sys

from medsr.cli import main

if __name__ == "__main__":  # not when a tool walks the package
    sys.exit(main())
