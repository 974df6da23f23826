"""What the user asks for: the dimension table (`dimensions`), the experiment file (`schema`,
`space_model`), the search space Optuna samples (`space`), the packaged files (`files`) and
their reference (`reference`). Imports `rundir`, `models` and `search.errors` only; neither
torch nor Ray."""
