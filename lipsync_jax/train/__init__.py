"""Training: mesh/sharding, train state, UNet and SyncNet steps, checkpoints, metrics, loop."""
