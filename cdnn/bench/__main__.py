"""python -m cdnn.bench: the same as `cdnn bench`."""
import sys

from .cli import main

sys.exit(main())
