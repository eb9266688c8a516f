"""Monitoring: counters, statistics and metrics fed by engine events, off the hot path."""
