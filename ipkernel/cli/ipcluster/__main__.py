"""``python -m ipkernel.cli.ipcluster``: the ``ipcluster`` command."""

import sys

from ipkernel.cli.ipcluster.command import main

sys.exit(main())
