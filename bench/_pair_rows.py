"""The loop the real-control measurement scripts share: each pair of --only from the pairs file,
measured, its row rewritten into the results file at once (re-read first: two runs may share it)."""
import json
from pathlib import Path


def each_pair(pairs_file, only: str, out, measure, key=lambda row: row["pair"]):
    """Yields measure(pair_dir) for each comma-separated index of `only`, after writing it to `out`
    ({"rows": [...]}, replacing a row with the same key)."""
    pairs, out = json.loads(Path(pairs_file).read_text()), Path(out)
    for i in [int(x) for x in only.split(",")]:
        row = measure(Path(pairs[i]["dir"]))
        rows = json.loads(out.read_text())["rows"] if out.exists() else []
        out.write_text(json.dumps({"rows": [r for r in rows if key(r) != key(row)] + [row]}, indent=1))
        yield row
