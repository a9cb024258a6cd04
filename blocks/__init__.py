"""pamflow blocks."""
