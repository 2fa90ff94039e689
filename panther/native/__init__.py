"""Loading of panther's compiled extension (placeholder until the native issue lands)."""
