"""The engine: from names to cells (plan), one cell (cell), a grid (grid), executors, claims, profiles, presets and
progress (see docs/architecture.md). Plugins, benchmarks and tests import its names from :mod:`bench.runner`."""
