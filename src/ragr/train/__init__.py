"""The one training engine (accelerate), with checkpoints, resume and logging."""
