"""`python -m preble_tiered.cli ...`: what the launcher runs for each child process."""

import sys

from preble_tiered.cli.main import main

sys.exit(main())
