"""Backbone pretraining for detection: ImageNet, Fashion-MNIST, none (detection.research.transfer).

    python scripts/transfer_study.py -- extras.num_threads=2
    python scripts/transfer_study.py --pretrained <an EfficientNet-Lite0 Fashion-MNIST checkpoint>
    python scripts/transfer_study.py --sweep-dir logs/transfer_study/multiruns/<stamp>   # tabulate only

Everything after `--` goes to the detection jobs as Hydra overrides.
"""

from detection.research.transfer import main

if __name__ == "__main__":
    main()
