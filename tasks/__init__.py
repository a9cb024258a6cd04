"""pamflow tasks."""
