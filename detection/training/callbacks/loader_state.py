"""Hand a resumed run's saved loader position to the training loader (see detection/data/loading.py).

Lightning 2.6 gives a stateful train loader its saved state in `FitLoop.setup_data`, but only the
first call of it does anything, and a task whose `configure_optimizers` reads
`trainer.estimated_stepping_batches` (for the schedule length) makes that first call before the
loop state is restored from the checkpoint: the state is read but never handed over, and the
resumed epoch would start from its first batch again. This callback hands it over when training
starts, before the first batch is drawn.
"""

from __future__ import annotations

import lightning as L

__all__ = ["LoaderStateCallback"]


class LoaderStateCallback(L.Callback):
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A no-op unless the fit loop restarts mid-epoch with loader states still waiting.
        trainer.fit_loop._load_combined_loader_states()
