"""`python benchmarks/run.py <name> [options]`: the same as `python -m benchmarks <name>`."""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    # Run as a script, this folder heads sys.path; the package must be imported from the root.
    sys.path = [str(root)] + [p for p in sys.path if Path(p or ".").resolve() != root / "benchmarks"]
    from benchmarks.__main__ import main

    sys.exit(main())
