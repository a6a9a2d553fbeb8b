"""``python -m fitbit_stream.bench``: the benchmark with all its flags (``scripts/bench.sh`` runs it)."""

from __future__ import annotations

import sys

from fitbit_stream.bench.cli import main

sys.exit(main())
