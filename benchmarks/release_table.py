"""Moved to bench/reporting/tables/release.py: `bench table release FOLDER DATASET [DEFENSE ...]`; this path stays for the
commands cited."""
import sys
from pathlib import Path

from bench.reporting.tables.release import table

if __name__ == "__main__":
    print(table(Path(sys.argv[1]), sys.argv[2], sys.argv[3:]))
