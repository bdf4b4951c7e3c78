#!/usr/bin/env python
"""Run cdnn's benchmark suite against PyTorch, JAX and scikit-learn.

    python bench/run.py --quick                                  # a few minutes
    python bench/run.py --full --json bench/results.json --markdown bench/RESULTS.md

Everything lives in the package `cdnn.bench` (also reachable as `cdnn bench` and
`python -m cdnn.bench`) so an installed wheel can run it; this file only forwards the arguments.
"""
import sys

from cdnn.bench import main

if __name__ == "__main__":
    sys.exit(main())
