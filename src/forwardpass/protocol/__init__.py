"""Wire protocols: the Open Inference Protocol (KServe V2) over HTTP, Triton-compatible.

``codec`` turns HTTP bodies into core types and back; it knows nothing of sockets.
"""
