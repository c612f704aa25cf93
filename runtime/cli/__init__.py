"""The ``moorage`` command. Each command group is one module; heavy imports stay inside handlers."""
