"""``python -m ndt_store.cli``."""

import sys

from ndt_store.cli import main

sys.exit(main())
