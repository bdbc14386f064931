"""Invitation e-mails: rendering (`parsec.mail.render`) and delivery over SMTP
(`parsec.mail.delivery`).

This package imports nothing itself: `parsec.mail.delivery` imports ``twisted.mail.smtp``,
which imports the global reactor and computes the local FQDN once (blocking DNS call at
import time), whereas `parsec.mail.render` is plain `email` package work that the backend
may import at any time.
"""
