"""Run every CPU benchmark in this folder (used by `make bench`). Results belong in docs/BENCHMARKS.md.

The ``gpu_*`` scripts are left out: ``bash benchmarks/gpu_check.sh`` runs them on a CUDA machine.
"""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
for script in sorted(here.glob("*.py")):
    if script.name != "run.py" and not script.name.startswith("gpu_"):
        print(f"== {script.name}", flush=True)
        subprocess.run([sys.executable, str(script), *sys.argv[1:]], check=True)
