"""Search service: experiment schema, Optuna space, Ray Tune trainable and tuner, export, CLI."""
