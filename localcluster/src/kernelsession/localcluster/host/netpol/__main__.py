"""``python -m kernelsession.localcluster.host.netpol``: the enforcer (:mod:`.enforcer`)."""

import sys

from kernelsession.localcluster.host.netpol.enforcer import main

sys.exit(main())
