"""ipkernel: interactive parallel computing for Python.

One controller, many engines, and two client interfaces (MultiEngine and Task) served
at once over Perspective Broker and TLS. The public surface for users is
:mod:`ipkernel.client`.
"""

__version__ = "0.1.0"
