"""`python -m buildctl`: the same as the `buildctl` command."""

import sys

from buildctl.cli import main

sys.exit(main())
