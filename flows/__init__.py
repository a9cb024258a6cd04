"""pamflow flows."""
