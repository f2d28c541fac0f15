"""Build hook.  The optional CUDA extension (csrc/) is added here by the CUDA
backend; without it this is a pure-Python install."""

from setuptools import setup

setup()
