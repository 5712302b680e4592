"""The status page: a ``twisted.web`` adapter over the controller service (SPEC §13).

It shows the engines, tasks by state, throughput, recent failures and data transfers,
live, from the service's read-only views; nothing it serves changes the controller.

- :mod:`~ipkernel.adapters.web.access`: the access token and the URL file;
- :mod:`~ipkernel.adapters.web.snapshot`: the status document (``/api/status``);
- :mod:`~ipkernel.adapters.web.transfers`: streams in flight and their rates;
- :mod:`~ipkernel.adapters.web.feed`: the live feed (server-sent events);
- :mod:`~ipkernel.adapters.web.page`: the page (``assets/``);
- :mod:`~ipkernel.adapters.web.resources`: what each path answers;
- :mod:`~ipkernel.adapters.web.site`: the ``twisted.web`` site and HTTPS options;
- :mod:`~ipkernel.adapters.web.listener`: :class:`StatusPage`, all of it, listening (the
  site is built, and ``twisted.web`` loaded, at the first request).
"""

from ipkernel.adapters.web.access import WEB_URL_FILE, read_url_file
from ipkernel.adapters.web.listener import StatusPage

__all__ = ["WEB_URL_FILE", "StatusPage", "read_url_file"]
