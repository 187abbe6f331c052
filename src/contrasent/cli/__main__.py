"""`python -m contrasent.cli`: the same as the `contrasent` command."""

import sys

from contrasent.cli.main import main

sys.exit(main())
