"""forwardpass on a Ray Serve cluster: the same model repository, Ray as the distributed engine.

One deployment per model runs forwardpass's own engine (its dynamic batcher included); an
ingress deployment speaks the Open Inference Protocol over HTTP and routes decoded tensors to
the models through deployment handles; ensembles call their steps the same way. Needs the
``ray`` extra (``pip install 'forwardpass[ray]'``); ``import forwardpass`` never imports ray.

- ``forwardpass serve --ray [ADDRESS]``: on the cluster at ADDRESS, or a new local one;
- ``serve run forwardpass.ray:app repository=/models``: Ray Serve's own CLI;
- :func:`app` in Python: ``serve.run(forwardpass.ray.app("/models"))``.
"""

from __future__ import annotations

from forwardpass.ray.application import RayOptions, app

__all__ = ["RayOptions", "app"]
