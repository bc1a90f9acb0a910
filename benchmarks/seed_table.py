"""Moved to bench/reporting/tables/seeds.py: `bench table seeds FOLDER DATASET ATTACK`; this path stays for the commands cited."""
import sys
from pathlib import Path

from bench.reporting.tables.seeds import table

if __name__ == "__main__":
    print(table(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
