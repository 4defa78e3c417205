"""``python -m deployer``: the same entry point as the ``deployer`` command."""

import sys

from deployer.cli import main

sys.exit(main())
