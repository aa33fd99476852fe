"""Benchmark harness entry point: `python bench/run.py [--quick] [--base DIR --dormant DIR] [--out DIR]`.

Same as `l0score bench`; see l0score/benchmark.py for what is measured. Results: bench/results/.
"""
import sys

from l0score.cli.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python bench/run.py"))
