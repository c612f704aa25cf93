"""The runc runtime ``runtime.runc`` (and ``runtime.crun``): tasks supervised by conmon.

Each task gets a small ``conmon`` monitor that runs ``runc create``, holds the
container's stdio, writes its log, and writes the exit status to a file before
it exits; it outlives the daemon. The daemon watches monitors through pidfds,
records each exit durably, then publishes it; after a restart it re-attaches
to live monitors and reports the exits it missed.

Modules: :mod:`.spec` and :mod:`.user` build OCI specs, :mod:`.oci` drives the
runc command line, :mod:`.conmon` starts monitors, :mod:`.layout` keeps the
on-disk records, :mod:`.cgroups` reads metrics, :mod:`.logs` reads logs,
:mod:`.attach` talks to a monitor's attach socket, :mod:`.process` and
:mod:`.task` hold the state machine, :mod:`.service` is the plugin's service.
"""
