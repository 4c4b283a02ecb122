"""python -m ctr_jax.report: see ctr_jax.report.cli."""

import sys

from ctr_jax.report.cli import main

sys.exit(main())
