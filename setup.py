"""Setuptools shim: the metadata lives in setup.cfg; this adds the twistd dropin.

``twisted/plugins/`` has no ``__init__.py`` on purpose (twistd scans it as a namespace),
so ``find_packages`` cannot see the dropin and it is listed here as a module.
"""

from setuptools import setup

setup(py_modules=["twisted.plugins.ipkernel_plugins"])
