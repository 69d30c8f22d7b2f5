"""spark-submit entry point: ``spark-submit jobs/cluster.py --config FILE [--set key=value ...]``.

Thin on purpose: parse arguments, run the library's job, exit with its code. The same job runs
with ``clusterlake run --config FILE``.
"""

import os
import sys

try:
    from clusterlake.cli import main
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
    from clusterlake.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
