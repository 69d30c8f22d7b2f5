"""spark-submit entry point of the streaming assignment:
``spark-submit jobs/assign_stream.py --config FILE [--set key=value ...] [--landing PATH]
[--checkpoint PATH] [--trigger available_now|"30 seconds"]``.

Thin on purpose, like ``jobs/cluster.py``: parse arguments, run :func:`clusterlake.cli.stream_main`,
exit with its code (0 done, 2 a user error with one ``clusterlake: error:`` line on stderr, 130
interrupted). See docs/streaming.md.
"""

import os
import sys

try:
    from clusterlake.cli import stream_main as main
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
    from clusterlake.cli import stream_main as main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
