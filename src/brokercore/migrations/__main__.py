"""``python -m brokercore.migrations [--url URL]``: apply what the database lacks."""

import sys

from brokercore.migrations import main

sys.exit(main())
