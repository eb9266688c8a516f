"""The ``forwardpass`` command line."""
