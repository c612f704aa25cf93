"""Built-in plugins: each subpackage registers through the ``moorage.plugins`` entry points."""
