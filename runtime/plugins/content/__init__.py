"""Content: the content-addressed blob store and its resumable ingests.

Other plugins import :mod:`runtime.plugins.content.api` (records, the digest
rule, the ``Store`` Protocol) and nothing else from here. The backend lives in
:mod:`runtime.plugins.content.local`; namespaces and labels are added on top by
the metadata plugin.
"""
