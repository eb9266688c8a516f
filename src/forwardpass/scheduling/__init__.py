"""Scheduling: the dynamic batcher that sits between the engine and the backends."""
