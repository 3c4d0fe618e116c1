"""`python -m chaos`: one fault-injection run (chaos/run.py)."""

import sys

from chaos.run import main

sys.exit(main())
