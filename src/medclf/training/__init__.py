"""Training stage: the LightningModule, callbacks and the run orchestration."""
