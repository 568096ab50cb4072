"""`python -m preble_tiered.cli ...`: what the launcher runs for each child process."""

import sys

from preble_tiered.cli.launcher import die_with_parent
from preble_tiered.cli.main import main

die_with_parent()
sys.exit(main())
