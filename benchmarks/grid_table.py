"""Moved to bench/reporting/tables/grid.py: `bench table grid FOLDER [SEED]`; this path stays for the commands cited."""
import sys
from pathlib import Path

from bench.reporting.tables.grid import tables

if __name__ == "__main__":
    print(tables(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1))
