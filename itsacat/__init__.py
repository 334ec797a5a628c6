"""The itsacat command."""
