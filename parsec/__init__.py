"""parsec-twisted: a Parsec 2.x server on Twisted and Autobahn."""

__version__ = "0.1.0"
