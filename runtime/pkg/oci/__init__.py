"""OCI runtime specs: the spec a container's record and image config produce."""
