"""pollers."""
