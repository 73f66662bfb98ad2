"""Differences in COCO mAP between runs, with paired bootstrap intervals (detection.research.compare).

    python scripts/compare.py logs/train/runs/<run A> logs/train/runs/<run B>
    python scripts/compare.py logs/train/multiruns/<sweep over seeds x lr>      # one group per lr
    python scripts/compare.py <sweep> <run> --baseline 1 --boot 2000 --out compare_out

Writes compare.md (also printed), compare.csv and compare.png into --out (default:
<first argument>/compare).
"""

from detection.research.compare import main

if __name__ == "__main__":
    main()
