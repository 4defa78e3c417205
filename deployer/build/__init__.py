"""Per-service Python environments: what a project declares and locks, which Python, built once per key.

``project`` reads the service folder (the one rule the reconciler shares, to hash what
decides an environment), ``interpreters`` picks the Python, ``envs`` builds and caches.
"""

from deployer.build.envs import BuildResult, EnvBuilder, python_for
from deployer.build.project import PythonRequest, Requirements, resolve_requirements

__all__ = ["BuildResult", "EnvBuilder", "PythonRequest", "Requirements", "python_for", "resolve_requirements"]
