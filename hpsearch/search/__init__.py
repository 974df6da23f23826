"""The search service, in rooms that import only downwards (tests/test_imports.py): `errors`,
`experiment`, `storage`, `console`, `trial`, `integrations`, `driver`, then `cli`."""
