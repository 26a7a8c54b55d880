"""python -m autograder.redteam OUT_DIR: write the planted submissions (see plants.py)."""
import sys
from pathlib import Path

from .plants import write

if __name__ == "__main__":
    write(Path(sys.argv[1]))
    print(f"planted submissions in {sys.argv[1]}/full and {sys.argv[1]}/checks")
