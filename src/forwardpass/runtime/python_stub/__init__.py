"""The Python backend's stub process (``python -m forwardpass.runtime.python_stub``).

Runs inside its own process, never imported by the server itself: the server side is
:mod:`forwardpass.runtime.python`.
"""
