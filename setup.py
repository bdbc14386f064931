from setuptools import find_packages, setup

setup(
    name="parsec-twisted",
    version="0.1.0",
    description="Parsec zero-trust file sharing server on Twisted and Autobahn",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="Proprietary",
    python_requires=">=3.11",
    packages=find_packages(include=["parsec", "parsec.*"]) + ["twisted.plugins"],
    package_data={
        "parsec": [
            "web/static/*",
            "web/templates/*",
            "templates/*",
            "storage/postgresql/migrations/*.sql",
        ],
    },
    include_package_data=True,
    # Each lower bound is the oldest release the whole suite passes with: tox -e oldest installs
    # exactly those (tests/oldest-constraints.txt).
    install_requires=[
        # parsec/web/listener.py completes twisted.web's bare error status lines and relies on
        # WebSocketResource swapping a ProtocolWrapper's protocol (tests/transport check both):
        # a new Twisted year is admitted once the suite has run on it. Before 26.4, a TLS
        # listener breaks on the pyOpenSSL that pip installs today (a Context may no longer be
        # changed once it made a connection), and 24.7 answers a plain upgrade differently.
        "twisted[tls]>=26.4,<27",
        # parsec.tls hands cryptography key and certificates to pyOpenSSL's Context; 25.2 is
        # also what Twisted 26.4's tls extra asks for.
        "pyOpenSSL>=25.2",
        # parsec.web.websocket's shortcuts are checked against this Autobahn's code
        # (tests/transport/test_autobahn_shortcuts.py); 24.4 is written differently.
        "autobahn>=25.9",
        "treq>=23.11",
        # The event bus's LISTEN session and the import/export tools.
        "psycopg2-binary>=2.9.5",
        # Every other PostgreSQL session (the pool's and the POSTGRESQL blockstore's): psycopg
        # 3's libpq binding (psycopg.pq) and its C loaders, with its compiled implementation
        # and libpq (parsec.storage.postgresql.binary). 3.2.0's binary extra names a
        # pre-release that was never published.
        "psycopg[binary]>=3.2.1,<4",
        "msgpack>=1.0.5",
        "pynacl>=1.5",
        "attrs>=23.1",
        "botocore>=1.31",
        # --metrics-listen: Prometheus text format and its Twisted resource (parsec.metrics).
        "prometheus-client>=0.20",
    ],
    extras_require={
        "sentry": ["sentry-sdk>=2.0"],
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6",
            "sentry-sdk>=2.0",
            "boto3",
            "python-swiftclient",
            # tests/packaging builds the wheel without build isolation (no download).
            "setuptools>=68",
            "wheel",
        ],
        "lint": ["ruff>=0.5"],
    },
    entry_points={"console_scripts": ["parsec = parsec.cli:main"]},
    zip_safe=False,
)
