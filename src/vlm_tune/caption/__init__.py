"""caption layer."""
