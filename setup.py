from pathlib import Path

from setuptools import find_packages, setup

about: dict[str, str] = {}
exec(Path("jetforce/__version__.py").read_text(), about)

setup(
    name="jetforce",
    version=about["__version__"],
    description="Gemini protocol server and application framework that accepts transient client certificates",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["jetforce", "jetforce.*"]),
    package_data={"jetforce": ["py.typed"]},
    python_requires=">=3.11",
    install_requires=[
        # The TLS transport subclass overrides a private hook of Twisted's
        # TLSMemoryBIOProtocol, so the supported range is kept explicit.
        "twisted[tls]>=24.7,<27",
        "pyOpenSSL>=24.3",
        "cryptography>=42",
        "idna>=3.4",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            # Pinned because tests/test_typing.py runs mypy, and other versions
            # may report different errors.
            "mypy==2.4.1",
            "mypy-zope==1.0.17",
        ],
    },
    entry_points={"console_scripts": ["jetforce=jetforce.__main__:main"]},
    classifiers=[
        "Environment :: No Input/Output (Daemon)",
        "Framework :: Twisted",
        "Programming Language :: Python :: 3.11",
        "Topic :: Internet",
    ],
)
