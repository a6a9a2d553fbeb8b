"""spark-submit entry point of the silver job (Databricks: ``spark_python_task`` with this file).

    spark-submit --jars $(ls .cache/jars/spark/*.jar | paste -sd, -) \\
        entrypoints/silver.py --config conf/local.yaml --once [--set section.key=value ...]

(``--jars``: under spark-submit the driver JVM starts before Python runs, so the session factory
cannot add Delta and the connectors to it any more.)

Thin on purpose: the arguments go to ``fitbit_stream.jobs.run_job("silver", ...)``, the same function
behind the ``fitbit-stream-silver`` console script.
"""

from __future__ import annotations

import sys

from fitbit_stream.jobs import run_job

if __name__ == "__main__":
    sys.exit(run_job("silver", sys.argv[1:]))
