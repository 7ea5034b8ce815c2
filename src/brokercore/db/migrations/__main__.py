"""``python -m brokercore.db.migrations [--url URL]``: apply what the database lacks."""

import sys

from brokercore.db.migrations import main

sys.exit(main())
