"""The plugin ``network.cni``: containers on CNI networks, in network namespaces of our own.

Modules, in the order data flows through them:

* :mod:`.conflist` - networks' configuration lists; the default one.
* :mod:`.netns` - pinned network namespaces under the plugin's state directory.
* :mod:`.invoke` - the CNI protocol: one plugin binary, ADD or DEL.
* :mod:`.records` - what is kept on disk about an attachment, and its public view.
* :mod:`.service` - attachments: recorded, made, undone, cleaned after a crash.
* :mod:`.plugin` - the registration and its config.
"""
