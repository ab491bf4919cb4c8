"""`python -m kubetune` is the `kubetune` command."""

import sys

from kubetune.cli import main

sys.exit(main())
