"""`l0score bench --fullmodel`: bad input gives a clear error before any model is loaded, and the
paper estimate's pool sizes are the largest that fit the time budget."""
import pytest

from l0score.benchmark_fullmodel import h100_estimate
from l0score.cli import main


@pytest.mark.parametrize("argv,message", [
    (["--reps", "0"], "--reps must be >= 1"),
    (["--pool", "0"], "--pool must be >= 1"),
    (["--base", "/nonexistent/base"], "give both --base and --dormant"),
])
def test_bad_input_is_an_error(argv, message, capsys):
    assert main(["bench", "--fullmodel", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("mfu", [0.25, 0.6])
def test_pool_size_is_the_largest_that_fits(mfu):
    est = h100_estimate(mfu=mfu)
    per_token = est["assumptions"]["flops_per_token_per_model"]
    a = est["assumptions"]
    for length in (2, 3):
        k = est[f"hunt_{length}"]["pool_K"]

        def seconds(pool):  # independent arithmetic: FLOPs of the whole enumeration / sustained rate
            tokens = pool**length * a["contexts"] * (1 + a["suffix_tokens"]) + pool ** (length - 1) * a["contexts"] * (
                a["prefix_tokens"] + length - 1)
            return 2 * tokens * per_token / (mfu * 989e12)

        assert seconds(k) <= 3600 < seconds(k + 1)
    assert est["hunt_2"]["pool_K"] > est["hunt_3"]["pool_K"] > 0
