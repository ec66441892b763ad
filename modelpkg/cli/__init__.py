"""The ``modelpkg`` command line (click): ``app`` is the group and its lazy loading, one module per command family.

A front end: imports anything below it; nothing imports it. Command modules never import ``app`` back.
"""
