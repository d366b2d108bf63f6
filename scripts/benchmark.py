"""Compare voting with linear heads: ``python scripts/benchmark.py --help``.

The same as ``harrison-knn benchmark ...``; see harrison_knn/benchmark.py.
"""

import sys

from harrison_knn.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
