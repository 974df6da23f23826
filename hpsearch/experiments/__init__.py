"""The experiment files shipped with hpsearch (package data: `*.yaml`, see search.experiment.files)."""
