"""spark-submit entry point of the incremental update:
``spark-submit jobs/update.py --config FILE --input PATH [--set key=value ...]``.

Thin on purpose, like ``jobs/cluster.py``: the same update runs with ``clusterlake update``.
"""

import os
import sys

try:
    from clusterlake.cli import main
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
    from clusterlake.cli import main

if __name__ == "__main__":
    sys.exit(main(["update", *sys.argv[1:]]))
