"""What a search prints: the quiet console (`printer`: a line per finished trial, a summary,
-v / -q) and Ray Tune's reporter of it (`tune`). Imports the rooms below it only."""
