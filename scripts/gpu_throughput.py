"""Training and inference images/s and peak memory of the main job's detector at each precision,
and Light-Head vs Faster R-CNN at 512 px (detection.research.throughput).

Usage:

    python scripts/gpu_throughput.py                       # on the GPU
    python scripts/gpu_throughput.py --device cpu --steps 2 --batch 2 --size 64 --rcnn-size 128
"""

from detection.research.throughput import main

if __name__ == "__main__":
    main()
