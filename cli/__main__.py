import sys

from actrec.cli import main

sys.exit(main())
