"""tooti's benchmark suite: ``python -m bench.run [--quick]`` and ``python -m bench.scale``.

See docs/performance.md for what is measured and the latest figures.
"""
