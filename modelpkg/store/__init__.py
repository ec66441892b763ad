"""The local store (a standard OCI image layout), and other tools' folders and archives read and written in place.

Imports ``core`` and ``base`` only: never the registry, the runtime, the verbs or the front ends.
"""

from modelpkg.store.layout import GCPlan, Pins, RefEntry, Store, link_annotations

__all__ = ["GCPlan", "Pins", "RefEntry", "Store", "link_annotations"]
