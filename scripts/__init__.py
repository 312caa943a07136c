"""The repository's Python helpers, one package (pytest.ini puts the repository root on the tests' path).

Command-line scripts (build_bundle, bench, ...) still run as files, `python scripts/NAME.py`; the modules the
unit tests, the Molecule scenarios' tests, the air-gap proof and the benchmark share are here too: containers
(the docker CLI and the containers' run options), pristine (the bad-input harness) and index_stack (the index's
real stack on loopback). Import them as `from scripts import NAME` or `from scripts.NAME import ...`.
"""
