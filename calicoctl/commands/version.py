"""Show the calicoctl version.

Usage:
  calicoctl version
"""

from calicoctl.output import out


def run(arguments):
    from calicoctl import __version__
    out(__version__)
