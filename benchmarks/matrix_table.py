"""Moved to bench/reporting/tables/matrix.py: `bench table matrix [FOLDER]`; this path stays for the commands cited."""
import sys
from pathlib import Path

from bench.reporting.tables.matrix import table

if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else "results/setting-matrix-h200")))
