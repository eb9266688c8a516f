"""Input processing and output interpretation around the forward pass."""
