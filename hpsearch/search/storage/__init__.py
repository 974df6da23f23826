"""Where a run lives: a local folder or an `s3://` / `gs://` URI with a local working copy.
`run_store.RunStore` is the one interface the verbs use; `remote` and `remote_tune` do the
transfers. Imports the experiment room and below."""
