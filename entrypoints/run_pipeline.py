"""spark-submit entry point: ``spark-submit entrypoints/run_pipeline.py --config conf/local.yaml --once``.

Thin on purpose: every argument goes to ``fitbit-stream run``; the library does the work.
"""

from __future__ import annotations

import sys

from fitbit_stream.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
