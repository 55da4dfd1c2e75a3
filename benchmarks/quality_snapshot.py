"""Quality snapshot: train tiger, causal and sasrec on ML-100K under a time budget each and
report the best Recall@10 / NDCG@10 on the valid split (full ranking, leave-one-out).

    python benchmarks/quality_snapshot.py [--minutes tiger=15,causal=15,sasrec=8]

Uses the bundled config <model>-ml100k (src/genrec/configs/); runs land in OUT/runs/<model>. Prints JSON, writes OUT/quality.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import ml100k_with_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", default="tiger=15,causal=15,sasrec=8")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    data = ml100k_with_ids(args.out)
    budgets = dict(item.split("=") for item in args.minutes.split(","))
    result = {}
    for model, minutes in budgets.items():
        run = args.out / "runs" / model
        cmd = [sys.executable, "-m", "genrec", "train", "--data", str(data), "--model", model, "--out", str(run),
               "--config", f"{model}-ml100k", "--time-budget", f"{minutes}m"]
        if run.exists():
            import shutil

            shutil.rmtree(run)
        subprocess.run(cmd, check=True)
        summary = json.loads((run / "train_summary.json").read_text())
        valid_log = (run / "valid_log.csv").read_text().strip().splitlines()
        header = valid_log[0].split(",")
        best = max((dict(zip(header, map(float, line.split(",")))) for line in valid_log[1:]),
                   key=lambda row: row["ndcg@10"])
        result[model] = {"minutes": float(minutes), "steps": summary["steps"], "best_step": int(best["step"]),
                         "valid_recall@10": best["recall@10"], "valid_ndcg@10": best["ndcg@10"],
                         "wall_s": summary["wall_seconds"]}
        print(json.dumps({model: result[model]}), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
