import sys

from spresso.cli import main

sys.exit(main())
