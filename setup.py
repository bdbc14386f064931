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
    install_requires=[
        # parsec/web/listener.py completes twisted.web's bare error status lines and relies on
        # WebSocketResource swapping a ProtocolWrapper's protocol (tests/transport check both):
        # a new Twisted year is admitted once the suite has run on it.
        "twisted[tls]>=24.3,<27",
        # parsec.tls hands cryptography key and certificates to pyOpenSSL's Context.
        "pyOpenSSL>=24.3",
        "autobahn>=23.1",
        "treq>=23.11",
        # The event bus's LISTEN session and the import/export tools.
        "psycopg2-binary>=2.9",
        # Every other PostgreSQL session (the pool's and the POSTGRESQL blockstore's): psycopg
        # 3's libpq binding (psycopg.pq) and its C loaders, with its compiled implementation
        # and libpq (parsec.storage.postgresql.binary).
        "psycopg[binary]>=3.2,<4",
        "msgpack>=1.0",
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
