"""d4-bridge."""
