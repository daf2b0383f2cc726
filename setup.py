# The cffi extension sevd._psp is built from cffi_build.py; everything else is in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["cffi_build.py:ffibuilder"])
