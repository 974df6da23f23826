"""Other tools' views of a run: optuna-dashboard (`dashboard`) and TensorBoard / MLflow
(`tracking`), each an optional extra. Imports the trial room and below."""
