# twistd plugin: `twistd parsec ...`. Kept import-light on purpose: ServiceMaker
# imports parsec.tap only when the subcommand is actually used.
from twisted.application.service import ServiceMaker

parsec = ServiceMaker("Parsec", "parsec.tap", "Parsec zero-trust file sharing server", "parsec")
