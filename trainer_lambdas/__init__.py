"""Lambda handlers and the numeric core."""
