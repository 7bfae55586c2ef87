"""What the tests and the benchmarks share: starting tooti's real processes and stopping them.

Not part of the tooti package (it is not installed); both suites run from the repository root.
"""
