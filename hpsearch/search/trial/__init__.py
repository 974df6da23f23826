"""What a Ray worker runs: the hand-offs every trial receives (`inputs`, `images`), the
trainable (`trainable`), its checkpoints, the same-init warm-up (`warmup`, `same_init`) and the
report contract (`report`). Never imports the driver, the integrations or the CLI."""
