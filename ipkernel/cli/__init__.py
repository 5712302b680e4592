"""The command-line programs: ``ipcontroller``, ``ipengine``, ``ipcluster``.

Each command is a module (:mod:`~ipkernel.cli.ipcontroller`, :mod:`~ipkernel.cli.ipengine`)
or a package (:mod:`~ipkernel.cli.ipcluster`) run with ``python -m``; their options share
:class:`~ipkernel.cli.command_options.CommandOptions` for ``--help``. ``ipcluster`` starts
engines through :mod:`~ipkernel.cli.launchers`, child processes through
:mod:`~ipkernel.cli.processes`, and local engines through :mod:`~ipkernel.cli.forkengines`.
"""
