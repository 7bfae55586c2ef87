import sys

from tooti.cli import main

sys.exit(main())
