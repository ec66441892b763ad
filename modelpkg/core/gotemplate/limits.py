"""Every cap the template engine puts on a template and on one render, in one place.

A hostile template must not hang or eat memory: the source size, the nesting of control structures and
parentheses, the range iterations and evaluation steps, the text functions may build, the output and the
depth of data values followed are all capped here, and going over raises TemplateError with ``LIMIT_HINT``.

Plain constants: imports nothing.
"""

MAX_SOURCE = 1 << 20  # characters of template source
MAX_OUTPUT = 1 << 20  # characters a render may produce (1 MiB of text)
MAX_WORK = 16 << 20  # characters all function results together may build in one render
MAX_RANGE_ITERATIONS = 100_000  # range iterations in one render, all ranges together
MAX_STEPS = 1_000_000  # nodes and commands evaluated in one render (a 1000-message chat takes ~30k)
MAX_NESTING = 50  # nested control structures and parentheses
MAX_VALUE_DEPTH = 100  # nesting of a data value that printing or json will follow

LIMIT_HINT = "the template loops or builds text without bound; check its range and printf actions"
