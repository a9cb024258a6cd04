"""pamflow bench."""
