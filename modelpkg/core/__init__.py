"""The pure core: names, digests, media types, manifests, Modelfiles, templates, dialects, signatures' payloads.

Values in, values out: str/bytes are parsed into frozen dataclasses and formatted back. Nothing here touches a
file, the network, the environment or the clock, and nothing here imports another room of modelpkg.
"""
