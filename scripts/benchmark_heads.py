"""Light-Head R-CNN vs Faster R-CNN inference time, freshly built (detection.research.heads).

Usage:

    python scripts/benchmark_heads.py                      # efficientnet_lite0, 512 px, 1 thread
    python scripts/benchmark_heads.py --size 128 --proposals 300 --threads 2
"""

from detection.research.heads import main

if __name__ == "__main__":
    main()
