"""OCI runtimes and task supervision.

:mod:`runtime.plugins.runtime.api` is the contract every ``runtime.*`` plugin
implements and the only module other plugins and the client import;
:mod:`runtime.plugins.tasks.service` routes task calls to the runtime named by
a container; :mod:`runtime.plugins.runtime.runc` is the runc/crun runtime.
"""
