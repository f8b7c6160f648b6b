import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("MPLBACKEND", "Agg")
# Tests train and synthesize eagerly: where the plan would compile (bf16 on an AMX CPU), every tiny trainer would
# spend seconds in the compiler and the suite's time would depend on the CPU. The compile paths have their own tests
# (explicit plans in test_acceleration.py, which ignore this variable, and the variable itself).
os.environ.setdefault("MRTOCT_COMPILE", "0")
