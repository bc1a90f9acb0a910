"""Moved to bench/reporting/tables/fidelity.py: `bench table fidelity [FOLDER]`; this path stays for the commands cited."""
import sys
from pathlib import Path

from bench.reporting.tables.fidelity import table

if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else "results/fidelity")))
