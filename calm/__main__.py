import sys

from calm.cli import main

sys.exit(main())
