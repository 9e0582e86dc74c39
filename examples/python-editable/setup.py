from setuptools import setup
setup(name="demo", version="0.1")
