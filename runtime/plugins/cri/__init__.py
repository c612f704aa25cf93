"""The Kubernetes CRI v1 front end (plugin ``cri.v1``).

A kubelet or ``crictl`` drives Moorage through the CRI's ``RuntimeService``
and ``ImageService`` (gRPC package ``runtime.v1``) on a unix socket. The
package holds the generated protocol stubs (``api_pb2``), the plugin's
registration, and the services built on Moorage's runtime, network, image,
snapshot and container services. ``streaming/`` holds the exec/attach/
port-forward server the Exec, Attach and PortForward RPCs hand out URLs for.

Nothing here imports :mod:`grpc` at module level except the generated stubs
and the server module, which the plugin imports when it starts.
"""
