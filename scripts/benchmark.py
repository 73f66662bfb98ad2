"""Heads x backbones on FashionDet under one budget (detection.research.benchmark).

    python scripts/benchmark.py                                    # 4 heads x 2 backbones
    python scripts/benchmark.py --heads fcos,retinanet --backbones efficientnet_lite0 -- \\
        trainer.limit_train_batches=20 extras.num_threads=2
    python scripts/benchmark.py --sweep-dir logs/benchmark/multiruns/<stamp>   # tabulate only

Everything after `--` goes to train.py as Hydra overrides.
"""

from detection.research.benchmark import main

if __name__ == "__main__":
    main()
